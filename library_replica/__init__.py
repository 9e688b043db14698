"""The community library and situation files, replicated as signed ops through sync/.

Pure cores materialise state from ops: ``documents.Library`` (Yjs text bodies,
last-writer-wins metadata, history, revert, block list), ``situation.SituationBoard``
(per-field last-writer-wins records, owner-only writes), ``bulletins.BulletinBoard``
and ``bulletins.TrustStore`` (authority keys, signed expiry).  ``search.SearchIndex``
(SQLite FTS5) and ``markdown_io`` (folders of Markdown) are the adapters.
``text`` is the one place that indexes a pycrdt ``Text``.  The safety registry
(``safety.SafetyRegistry``: person records plus notes, namespace ``safety``) has
its own name index (``safety_index``) and node service (``safety_service``);
``summary.town_summary`` totals shelters' needs and matches power offers.

Wiring (the composition root does this)::

    trust = TrustStore(TrustConfig.load(state_dir / "trust.toml"))
    library, situation, bulletins = Library(blocked), SituationBoard(), BulletinBoard(trust)
    store = await OpStore.open(..., authorizers=sync_authorizers({
        "library": library.authorize, "situation": authorize_situation,
        "bulletin": bulletins.authorize, "trust": trust.authorize}))
    # subscriber: for each committed op, by op.namespace:
    #   library.apply(op) | situation.apply(op) | bulletins.apply(op, wall_ms) | trust.apply(op)
    # then refresh_index(index, library) (in a worker thread); on a timer
    # bulletins.purge(wall_ms) beside store.purge_expired().
    # on start: replay store.iter_namespace(ns) for each namespace in the same way.

Local changes: ``library.prepare_create/prepare_edit/prepare_revert/prepare_delete``
return ``PreparedOp`` lists to submit in order with ``store.add_local(key,
kind=p.kind, doc_id=doc_id, body=p.body)``; ``situation.prepare_set`` returns
``(doc_id, body)``; ``bulletins.prepare_bulletin`` returns a body to submit with
``expiry_ms=expires_ms``.  Block list: ``library.set_blocked(keys)`` together
with ``store.set_withheld_authors(library.blocked)`` (their ops are kept, hidden
and not offered to peers); ``library.relayable(op)`` answers per op.
"""
