"""meshctl trust: the community root key, its authorities, and enrolment of nodes.

The root key lives in a file kept offline (``trust init``); ``trust authority
add|remove`` read it, sign a whole new configuration as a ``trust.update`` op
here, in meshctl, and hand the signed op to the daemon, which stores and
spreads it like any op (the root's secret never reaches a daemon).  Updates
are ephemeral ops (an expiry, outside the root key's chain), so a root used
from any node can never fork its chain; their version is the Unix time in
seconds (or one more than the node's), so coordinators working from nodes
that are behind do not publish two configurations under one number.

The community web CA is separate from the root key (``trust web-ca``, also an
offline file): a community may have one without the other, and its key is an
X.509 P-256 key browsers accept, not the root's Ed25519 key.  ``trust web-cert``
runs at a dealer visit on the car itself, with the CA file on the dealer's
stick: it signs the node's web key for the car's addresses into the state
directory (``web.cert.sign_node_certificate``); meshd serves that certificate
from its next start, and ``/ca`` offers the CA to phones.
"""

from __future__ import annotations

import argparse
import os
import time
import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    ExitCode,
    Output,
    _global_options,
    _str,
    register,
)
from library_replica.bulletins import (
    KIND_TRUST_UPDATE,
    MAX_COMMUNITY,
    TRUST_UPDATE_LIFETIME_MS,
    Authority,
    AuthorityRole,
    fingerprint,
    format_fingerprint,
    prepare_trust_update,
)
from library_replica.keycerts import (
    KIND_MEMBER,
    KIND_REVOKE,
    prepare_key_statement,
    prepare_member_certificate,
)
from meshd.config import parse_hostport
from meshd.control.client import ControlClient
from meshd.core.errors import LocalProtocolError
from meshd.core.identity import KEY_FILE, Identity
from meshd.paths import default_state_dir
from sync.envelope import create_op
from web.cert import load_ca, make_ca, sign_node_certificate, write_ca

__all__ = ["load_root_key", "load_statement", "write_root_key"]

_HEADER = """\
# carmesh community root key.  KEEP IT OFFLINE (a USB stick in a safe): whoever holds
# this file decides who may publish bulletins to the whole community.  Never copy it
# into a node's state directory.  The public half and its fingerprint may be shared.
"""


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


_KEY_HEADER = """\
# carmesh authority key (a dealer desk's, or a city's): whoever holds this file enrols
# members, and revokes the members it enrolled, in the name of its authority.  Keep it
# on the desk's USB stick, not in a node's state directory.
"""

_STATEMENT_HEADER = """\
# carmesh key statement, signed in advance by this device's key.  KEEP IT OFFLINE (with
# your papers): if the device is lost or stolen, `meshctl trust publish FILE` on any
# node revokes its key everywhere the mesh reaches, and names its successor if one is
# below.  Anyone holding this file can revoke the device; no one can do more with it.
"""


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with ``text`` (mode 0600, never over an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_root_key(path: Path, key: Ed25519PrivateKey, community: str, *,
                   header: str = _HEADER) -> None:
    """Create ``path`` (mode 0600, never over an existing file) holding the root key."""
    secret = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    text = (header + f"community = {_toml_str(community)}\n"
            f'public = "{_pub(key).hex()}"\n'
            f'fingerprint = "{format_fingerprint(fingerprint(_pub(key)))}"\n'
            f'secret = "{secret.hex()}"\n')
    _write_private(path, text)


def load_root_key(path: Path) -> tuple[Ed25519PrivateKey, str]:
    """(key, community name) from a root key file; raises ``ValueError`` with the reason."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["secret"]))
        community = data.get("community", "")
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a root key file ({exc})") from None
    if "public" in data and data["public"] != _pub(key).hex():
        raise ValueError(f"{path}: public key does not match the secret")
    return key, str(community)


def _toml_str(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _resolved(path: Path) -> str:
    return str(path.resolve())


def _read_enrolment(src: Path) -> str | None:
    """The text of an enrolment file, or None when ``src`` is not a file."""
    if not src.is_file():
        return None
    return src.read_text(encoding="utf-8")


def _write_file(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _key_arg(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise argparse.ArgumentTypeError("KEY is a 64-hex Ed25519 key (see `trust show`: key)")
    return key


def _setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="make a community root key in a file (offline; no daemon)")
    init.add_argument("--root-key", type=Path, required=True, metavar="FILE",
                      help="where to create the root key (mode 0600; kept offline)")
    init.add_argument("--community", default="", metavar="NAME",
                      help="the community's name, shown by `trust show`")
    init.add_argument("--force", action="store_true",
                      help="allow FILE inside the node's state directory (not recommended)")
    init.set_defaults(offline_run=_init)
    sub.add_parser("show", help="the community, its version, authorities, and what is carried")
    exp = sub.add_parser("export", help="write the enrolment file (for `trust join FILE`)")
    exp.add_argument("file", type=Path, metavar="FILE")
    join = sub.add_parser("join", help="pin the community root on this node: an enrolment "
                                       "file, or the root's fingerprint")
    join.add_argument("source", metavar="FILE|FINGERPRINT")
    auth = sub.add_parser("authority", help="add or remove an authority (signs with the root)")
    asub = auth.add_subparsers(dest="auth_action", metavar="ACTION", required=True)
    add = asub.add_parser("add", help="add (or rename) an authority key")
    add.add_argument("key", type=_key_arg, metavar="KEY")
    add.add_argument("--role", required=True, choices=[r.value for r in AuthorityRole])
    add.add_argument("--name", required=True, metavar="N")
    add.add_argument("--root-key", type=Path, required=True, metavar="FILE")
    rm = asub.add_parser("remove", help="remove an authority key (its bulletins go; its node "
                                        "key stays a citizen's unless --revoke)")
    rm.add_argument("key", type=_key_arg, metavar="KEY")
    rm.add_argument("--root-key", type=Path, required=True, metavar="FILE")
    rm.add_argument("--revoke", action="store_true",
                    help="also revoke the key (a stolen or compromised authority key): its "
                         "ops and links are refused, a dealer's enrolments end")
    mem = sub.add_parser("member", help="enrol or un-enrol a member node key (signs with the "
                                        "root, or a dealer's key)")
    msub = mem.add_subparsers(dest="member_action", metavar="ACTION", required=True)
    for name, text in (("add", "enrol a car's or phone's key as a member"),
                       ("remove", "take a key off the members list (not revoked)")):
        mp = msub.add_parser(name, help=text)
        mp.add_argument("key", type=_key_arg, metavar="KEY")
        g = mp.add_mutually_exclusive_group(required=True)
        g.add_argument("--root-key", type=Path, metavar="FILE")
        if name == "add":
            g.add_argument("--authority-key", type=Path, metavar="FILE",
                           help="a dealer authority's key file: a member certificate signed "
                                "by the dealer (no root key at the desk)")
    rv = sub.add_parser("revoke", help="revoke a node key: a lost or stolen device (signs with "
                                       "the root, or the dealer that enrolled it)")
    rv.add_argument("key", type=_key_arg, metavar="KEY")
    g = rv.add_mutually_exclusive_group(required=True)
    g.add_argument("--root-key", type=Path, metavar="FILE")
    g.add_argument("--authority-key", type=Path, metavar="FILE",
                   help="the key file of the dealer that enrolled KEY")
    rv.add_argument("--successor", type=_key_arg, metavar="NEWKEY",
                    help="the owner's new device, which carries on KEY's records (and is "
                         "enrolled by the same dealer)")
    kn = sub.add_parser("key", help="make an authority key file (a dealer desk's; offline)")
    knsub = kn.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    kg = knsub.add_parser("new", help="create an Ed25519 key file (mode 0600), print its key")
    kg.add_argument("file", type=Path, metavar="FILE")
    kg.set_defaults(offline_run=_key_new)
    st = sub.add_parser("statement", help="sign, with this node's key, its own revocation "
                                          "(and successor) for the owner to keep offline")
    st.add_argument("file", type=Path, metavar="FILE", help="where to write it (mode 0600)")
    sg = st.add_mutually_exclusive_group()
    sg.add_argument("--successor", type=_key_arg, metavar="NEWKEY",
                    help="the key of the device that carries on this one's records")
    sg.add_argument("--spare", type=Path, metavar="DIR",
                    help="make a spare node identity in DIR (a new state directory, kept "
                         "with the statement) and name it the successor")
    pb = sub.add_parser("publish", help="publish a statement file made by `trust statement` "
                                        "(from any node: the device is lost)")
    pb.add_argument("file", type=Path, metavar="FILE")
    wca = sub.add_parser("web-ca", help="make the community web CA in a file (offline; no daemon)")
    wca.add_argument("--ca", type=Path, required=True, metavar="FILE",
                     help="where to create the CA's certificate and key (mode 0600; offline)")
    wca.add_argument("--community", default="", metavar="NAME",
                     help="the community's name, in the CA's name phones show")
    wca.add_argument("--force", action="store_true",
                     help="allow FILE inside the node's state directory (not recommended)")
    wca.set_defaults(offline_run=_web_ca)
    wcert = sub.add_parser("web-cert", help="sign this node's web certificate with the web CA "
                                            "(at a dealer visit; offline, no daemon)")
    wcert.add_argument("--ca", type=Path, required=True, metavar="FILE",
                       help="the web CA file made by `trust web-ca`")
    wcert.add_argument("--address", action="append", required=True, metavar="ADDR[:PORT]",
                       help="an address the car serves phones on (its --web; repeatable)")
    wcert.add_argument("--name", default="", metavar="N", help="the car's name in the certificate")
    wcert.set_defaults(offline_run=_web_cert)
    for sp in (*sub.choices.values(), *asub.choices.values(), *msub.choices.values(),
               *knsub.choices.values()):
        _global_options(sp, suppress=True)


async def _init(args: argparse.Namespace, out: Output) -> int:
    path: Path = args.root_key
    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    if _inside(path, Path(state_dir)) and not args.force:
        return out.fail(ExitCode.USAGE, f"{path} is inside the state directory {state_dir}: "
                        "keep the root key offline (or pass --force)")
    if len(args.community) > MAX_COMMUNITY:
        return out.fail(ExitCode.USAGE, f"--community is at most {MAX_COMMUNITY} characters")
    key = Ed25519PrivateKey.generate()
    try:
        write_root_key(path, key, args.community)
    except FileExistsError:
        return out.fail(ExitCode.FAILED, f"{path} exists: a root key is never overwritten")
    except OSError as exc:
        return out.fail(ExitCode.FAILED, f"{path}: {exc.strerror or exc}")
    fp = format_fingerprint(fingerprint(_pub(key)))
    if out.json:
        out.document({"root_key_file": _resolved(path), "root": _pub(key).hex(),
                      "fingerprint": fp, "community": args.community})
    else:
        out.line(f"root key written to {path} (mode 0600): keep it offline")
        out.line(f"fingerprint {fp}")
        out.line("enrol a node with `meshctl trust join " + fp + "`")
    return ExitCode.OK


async def _key_new(args: argparse.Namespace, out: Output) -> int:
    path: Path = args.file
    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    if _inside(path, Path(state_dir)):
        return out.fail(ExitCode.USAGE, f"{path} is inside the state directory {state_dir}: "
                        "keep an authority key off the node")
    key = Ed25519PrivateKey.generate()
    try:
        write_root_key(path, key, "", header=_KEY_HEADER)
    except FileExistsError:
        return out.fail(ExitCode.FAILED, f"{path} exists: a key file is never overwritten")
    except OSError as exc:
        return out.fail(ExitCode.FAILED, f"{path}: {exc.strerror or exc}")
    if out.json:
        out.document({"key_file": _resolved(path), "key": _pub(key).hex()})
    else:
        out.line(f"key written to {path} (mode 0600)")
        out.line(f"key {_pub(key).hex()}")
        out.line("the root adds it: meshctl trust authority add KEY --role dealer --name N "
                 "--root-key FILE")
    return ExitCode.OK


def load_statement(path: Path) -> tuple[str, bytes]:
    """(kind, body) of a statement file; raises ``ValueError`` with the reason."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        kind, body = str(data["kind"]), bytes.fromhex(data["body"])
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a statement file ({exc})") from None
    if kind not in (KIND_REVOKE, KIND_MEMBER):
        raise ValueError(f"{path}: kind is {kind!r}, not a key statement")
    return kind, body


def _submit_doc(res: dict[str, Any], out: Output, what: str) -> int:
    if out.json:
        out.document(res)
    else:
        out.line(f"published {what} (op {str(res.get('op_id'))[:12]})")
    return ExitCode.OK


async def _statement(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    """``trust statement FILE``: the daemon signs; the file is written here, never published."""
    params: dict[str, Any] = {}
    if args.successor is not None:
        params["successor"] = args.successor.hex()
    if args.spare is not None:
        spare: Path = args.spare
        if (spare / KEY_FILE).exists():
            return out.fail(ExitCode.FAILED, f"{spare / KEY_FILE} exists: pick a new directory")
        try:
            params["successor"] = Identity.load_or_create(spare).ed25519_pub.hex()
        except OSError as exc:
            return out.fail(ExitCode.FAILED, f"{spare}: {exc.strerror or exc}")
    res = await client.call("trust.statement", params, timeout=CALL_TIMEOUT_S)
    text = (_STATEMENT_HEADER + f'kind = "{res["kind"]}"\n' f'key = "{res["key"]}"\n'
            + (f'successor = "{res["successor"]}"\n' if res.get("successor") else "")
            + f'body = "{res["body"]}"\n')
    try:
        _write_private(args.file, text)
    except FileExistsError:
        return out.fail(ExitCode.FAILED, f"{args.file} exists: never overwritten")
    except OSError as exc:
        return out.fail(ExitCode.FAILED, f"{args.file}: {exc.strerror or exc}")
    doc = {"file": _resolved(args.file), "key": res["key"], "successor": res.get("successor"),
           "spare": _resolved(args.spare) if args.spare is not None else None}
    if out.json:
        out.document(doc)
    else:
        out.line(f"statement written to {args.file} (mode 0600): keep it offline; "
                 f"`meshctl trust publish {args.file}` revokes {res['key'][:16]}…"
                 + (f" and hands its records to {res['successor'][:16]}…"
                    if res.get("successor") else ""))
        if args.spare is not None:
            out.line(f"spare identity in {args.spare}: start the new device on a copy of it "
                     "(meshd --state-dir COPY)")
    return ExitCode.OK


async def _dealer(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    """``member add`` / ``revoke`` with ``--authority-key``: signed by the dealer's key."""
    try:
        secret, _ = load_root_key(args.authority_key)
    except ValueError as exc:
        return out.fail(ExitCode.FAILED, str(exc))
    dealer = _pub(secret)
    cur = await client.call("trust.show", timeout=CALL_TIMEOUT_S)
    if cur.get("pinned") != "root" or not cur.get("root"):
        return out.fail(ExitCode.FAILED, "this node holds no trust configuration (meshctl "
                        "trust join FILE first)")
    if not any(a.get("key") == dealer.hex() and a.get("role") == "dealer"
               for a in cur.get("authorities") or []):
        return out.fail(ExitCode.FAILED, f"{dealer.hex()} is not a dealer authority of "
                        f"version {cur.get('version')} (the root adds it: trust authority add)")
    root = bytes.fromhex(str(cur["root"]))
    version = int(cur["version"])
    now_ms = int(time.time() * 1000)
    key: bytes = args.key
    if args.action == "member":
        _, body = prepare_member_certificate(secret.sign, dealer, key, root=root,
                                             trust_version=version, issued_ms=now_ms)
        res = await client.call("trust.submit", {"kind": KIND_MEMBER, "body": body.hex()},
                                timeout=CALL_TIMEOUT_S)
        return _submit_doc(res, out, f"member certificate for {key.hex()[:16]}…")
    if args.successor is not None:  # re-enrolment: the new device is a member of this dealer
        _, body = prepare_member_certificate(secret.sign, dealer, args.successor, root=root,
                                             trust_version=version, issued_ms=now_ms)
        await client.call("trust.submit", {"kind": KIND_MEMBER, "body": body.hex()},
                          timeout=CALL_TIMEOUT_S)
    _, body = prepare_key_statement(secret.sign, dealer, key, successor=args.successor,
                                    made_ms=now_ms)
    res = await client.call("trust.submit", {"kind": KIND_REVOKE, "body": body.hex()},
                            timeout=CALL_TIMEOUT_S)
    return _submit_doc(res, out, f"revocation of {key.hex()[:16]}…")


async def _web_ca(args: argparse.Namespace, out: Output) -> int:
    path: Path = args.ca
    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    if _inside(path, Path(state_dir)) and not args.force:
        return out.fail(ExitCode.USAGE, f"{path} is inside the state directory {state_dir}: "
                        "keep the web CA offline (or pass --force)")
    if len(args.community) > MAX_COMMUNITY:
        return out.fail(ExitCode.USAGE, f"--community is at most {MAX_COMMUNITY} characters")
    key, cert = make_ca(args.community)
    try:
        write_ca(path, key, cert)
    except FileExistsError:
        return out.fail(ExitCode.FAILED, f"{path} exists: a web CA is never overwritten")
    except OSError as exc:
        return out.fail(ExitCode.FAILED, f"{path}: {exc.strerror or exc}")
    fp = cert.fingerprint(hashes.SHA256()).hex()
    if out.json:
        out.document({"ca_file": _resolved(path), "sha256": fp, "community": args.community,
                      "not_after": cert.not_valid_after_utc.isoformat()})
    else:
        out.line(f"web CA written to {path} (mode 0600): keep it offline")
        out.line(f"SHA-256 {_colons(fp)}")
        out.line("sign a car's web certificate at its dealer visit with "
                 f"`meshctl trust web-cert --ca {path} --address ADDR`")
    return ExitCode.OK


def _colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i:i + 2] for i in range(0, len(hexdigest), 2)).upper()


async def _web_cert(args: argparse.Namespace, out: Output) -> int:
    state_dir = Path(args.state_dir if args.state_dir is not None else default_state_dir())
    try:
        ca_key, ca_cert = load_ca(args.ca)
    except ValueError as exc:
        return out.fail(ExitCode.FAILED, str(exc))
    hosts: list[str] = []
    for spec in args.address:
        try:
            hosts.append(parse_hostport(spec, default_port=443)[0])
        except ValueError as exc:
            return out.fail(ExitCode.USAGE, f"--address {spec}: {exc}")
    try:
        path = sign_node_certificate(ca_key, ca_cert, state_dir, hosts, args.name)
    except ValueError as exc:
        return out.fail(ExitCode.USAGE, str(exc))
    except OSError as exc:
        return out.fail(ExitCode.FAILED, f"{state_dir}: {exc.strerror or exc}")
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if out.json:
        out.document({"certificate": _resolved(path), "addresses": names,
                      "not_after": cert.not_valid_after_utc.isoformat(),
                      "ca_sha256": ca_cert.fingerprint(hashes.SHA256()).hex()})
    else:
        out.line(f"web certificate {path} signed for {', '.join(names)} until "
                 f"{cert.not_valid_after_utc:%Y-%m-%d}")
        out.line("meshd serves it from its next start; phones install the CA from /ca")
    return ExitCode.OK


def _show(res: dict[str, Any], out: Output) -> None:
    pinned = res.get("pinned")
    if pinned == "none":
        out.line("not enrolled in a community (meshctl trust join FILE|FINGERPRINT)")
    else:
        out.line(f"community {_str(res.get('community') or None)}, version "
                 f"{_str(res.get('version'))}, fingerprint {_str(res.get('fingerprint'))}"
                 + (" (waiting for the root's configuration)" if pinned == "fingerprint"
                    else ""))
        auths = res.get("authorities") or []
        out.line(f"authorities: {len(auths)}")
        for a in auths:
            if isinstance(a, dict):
                out.line(f"  {_str(a.get('role')):<7} {_str(a.get('name') or None):<24} "
                         f"{_str(a.get('key'))}")
        if res.get("members"):
            out.line(f"members: {len(res['members'])}")
        if res.get("revoked"):
            out.line(f"revoked keys: {len(res['revoked'])}")
        certified = res.get("certified") or []
        if certified:
            out.line(f"dealer certificates: {len(certified)} "
                     f"({sum(1 for c in certified if isinstance(c, dict) and c.get('valid'))} "
                     "of a current dealer)")
        for r in res.get("revocations") or []:
            if isinstance(r, dict):
                out.line(f"  revoked {_str(r.get('key'))[:16]}… by {_str(r.get('rank'))}"
                         + (f", continued by {_str(r.get('successor'))[:16]}…"
                            if r.get("successor") else ""))
    out.line(f"this node's key {_str(res.get('key'))}"
             + (" (REVOKED)" if res.get("revoked_here") else
                " (an authority)" if res.get("authority") else
                " (a member)" if res.get("member") else ""))
    if res.get("person") and res.get("person") != res.get("key"):
        out.line(f"  carries on the records of {_str(res.get('person'))}")
    c = res.get("carried") or {}
    out.line(f"carrying unverified: {_str(c.get('ops'))} op(s), {_str(c.get('bytes'))} bytes "
             f"(at most {_str(c.get('max_ops'))} ops, {_str(c.get('max_bytes'))} bytes)")


async def _authority(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    try:
        secret, key_community = load_root_key(args.root_key)
    except ValueError as exc:
        return out.fail(ExitCode.FAILED, str(exc))
    root = _pub(secret)
    cur = await client.call("trust.show", timeout=CALL_TIMEOUT_S)
    fp = format_fingerprint(fingerprint(root))
    if cur.get("pinned") == "none":
        return out.fail(ExitCode.FAILED, f"this node has not joined a community: run `meshctl "
                        f"trust join {fp}` on it first")
    if cur.get("fingerprint") != fp:
        return out.fail(ExitCode.FAILED, f"this node is pinned to another root "
                        f"({cur.get('fingerprint')}, not {fp})")
    auths = {bytes.fromhex(a["key"]): Authority(bytes.fromhex(a["key"]), AuthorityRole(a["role"]),
                                                str(a["name"])) for a in cur["authorities"]}
    revoked = {bytes.fromhex(k) for k in cur["revoked"]}
    # revocations by key statements (the key itself, its dealer) become part of the
    # root-signed configuration, which nodes keep after the statements' ops expire
    revoked |= {bytes.fromhex(r["key"]) for r in cur.get("revocations") or []}
    members = {bytes.fromhex(k) for k in cur.get("members") or []}
    successors = {bytes.fromhex(k): bytes.fromhex(v)
                  for k, v in (cur.get("successors") or {}).items()}
    for k in list(members):  # a listed member's successor stays a member in the list
        while k in successors and successors[k] not in members:  # (no cycles)
            k = successors[k]
            members.add(k)
    members -= revoked
    key: bytes = args.key
    if args.action == "revoke":  # a lost or stolen device: no ops, no links, no authority
        auths.pop(key, None)
        members.discard(key)
        revoked.add(key)
        if args.successor is not None:
            members.add(args.successor)
    elif args.action == "member":
        if args.member_action == "add":
            members.add(key)
            revoked.discard(key)
        elif key not in members:
            return out.fail(ExitCode.FAILED, f"{key.hex()} is not a member")
        else:
            members.discard(key)
    elif args.auth_action == "add":
        auths[key] = Authority(key, AuthorityRole(args.role), args.name)
        revoked.discard(key)
    else:
        if key not in auths:
            return out.fail(ExitCode.FAILED, f"{key.hex()} is not an authority")
        gone = auths.pop(key)
        if args.revoke:  # compromised: its key is refused, its enrolments end with it
            revoked.add(key)
        elif gone.role is AuthorityRole.DEALER:  # retired: the root takes over its members
            enrolled = {bytes.fromhex(c["member"]) for c in cur.get("certified") or []
                        if c.get("dealer") == key.hex()}
            for k in list(enrolled):  # a lost device's successor carries on its membership
                while k in successors and successors[k] not in enrolled:  # (no cycles)
                    k = successors[k]
                    enrolled.add(k)
            members |= enrolled - revoked
    version = max(int(cur["version"]) + 1, int(time.time()))
    community = str(cur.get("community") or key_community)
    try:
        doc_id, body = prepare_trust_update(secret.sign, root, version, auths.values(),
                                            revoked=revoked, community=community,
                                            members=members)
    except LocalProtocolError as exc:
        return out.fail(ExitCode.FAILED, f"cannot sign this configuration: {exc}")
    now_ms = int(time.time() * 1000)
    op = create_op(secret, kind=KIND_TRUST_UPDATE, doc_id=doc_id, body=body, seq=0, prev=None,
                   hlc=now_ms << 16, expiry_ms=now_ms + TRUST_UPDATE_LIFETIME_MS)
    res = await client.call("trust.publish", {"op": op.raw.hex()}, timeout=CALL_TIMEOUT_S)
    if args.action == "revoke" and args.successor is not None:
        _, sbody = prepare_key_statement(secret.sign, root, key, successor=args.successor,
                                         made_ms=now_ms)
        res = await client.call("trust.submit", {"kind": KIND_REVOKE, "body": sbody.hex()},
                                timeout=CALL_TIMEOUT_S)
    if out.json:
        out.document(res)
    else:
        out.line(f"published trust version {res.get('version')} "
                 f"({len(res.get('authorities') or [])} authorities, op "
                 f"{str(res.get('op_id'))[:12]})")
    return ExitCode.OK


@register("trust", "community trust: root key, authorities, enrolment (init, show, export, "
          "join, authority add|remove, member add|remove, revoke, key new, statement, "
          "publish, web-ca, web-cert)", _setup)
async def _trust(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if args.action in ("member", "revoke") and getattr(args, "authority_key", None):
        return await _dealer(client, args, out)
    if args.action in ("authority", "member", "revoke"):
        return await _authority(client, args, out)
    if args.action == "statement":
        return await _statement(client, args, out)
    if args.action == "publish":
        try:
            kind, body = load_statement(args.file)
        except ValueError as exc:
            return out.fail(ExitCode.FAILED, str(exc))
        res = await client.call("trust.submit", {"kind": kind, "body": body.hex()},
                                timeout=CALL_TIMEOUT_S)
        return _submit_doc(res, out, f"the statement in {args.file}")
    if args.action == "join":
        src = Path(args.source)
        try:
            text = _read_enrolment(src)
        except (OSError, UnicodeDecodeError) as exc:
            return out.fail(ExitCode.FAILED, f"{src}: {exc}")
        if text is not None:
            params = {"config": text}
        elif any(c in args.source for c in "/."):
            return out.fail(ExitCode.USAGE, f"{src}: no such enrolment file")
        else:
            params = {"fingerprint": args.source}
        res = await client.call("trust.join", params, timeout=CALL_TIMEOUT_S)
    elif args.action == "export":
        res = await client.call("trust.export", timeout=CALL_TIMEOUT_S)
        path: Path = args.file
        try:
            _write_file(path, str(res["config"]))
        except OSError as exc:
            return out.fail(ExitCode.FAILED, f"{path}: {exc.strerror or exc}")
        doc = {"file": _resolved(path), "community": res.get("community"),
               "version": res.get("version"), "fingerprint": res.get("fingerprint"),
               "authorities": res.get("authorities")}
        if out.json:
            out.document(doc)
        else:
            out.line(f"enrolment file {path}: {_str(doc['community'] or None)} version "
                     f"{doc['version']}, fingerprint {doc['fingerprint']}")
        return ExitCode.OK
    else:
        res = await client.call("trust.show", timeout=CALL_TIMEOUT_S)
    if out.json:
        out.document(res)
    else:
        _show(res, out)
    return ExitCode.OK
