"""The community library and situation files, replicated as signed ops through sync/.

Pure cores (``text``, ``documents``, ``situation``, ``bulletins``) materialise
state from ops; ``search`` and ``markdown_io`` are the SQLite and file-system
adapters.  See docs in each module's "theory of operation".
"""
