#!/usr/bin/env python3
"""moor_csi — a CSI client that shares no code with moor: kubelet's calls from Python.

It compiles a CSI ``.proto`` (by default moor's ``proto/csi.proto``, package ``csi.v1``) with
``grpc_tools.protoc`` into a temporary directory when it starts, imports the generated
stubs from there and dials a plugin's Unix socket with ``grpcio``. Nothing of moor is
imported, linked or generated ahead of time, so a disagreement between moor's Rust code and
the wire format written in the ``.proto`` shows up here as a failed call. Requests are
built by field name from the CSI spec (``volume_id``, ``staging_target_path``, …) and only
the fields the compiled request message has are set.

Library::

    import moor_csi
    c = moor_csi.Client("/var/lib/kubelet/plugins/nfs.csi.moor.io/csi.sock")
    c.call("NodeGetInfo")                                  # -> dict
    c.call("NodeStageVolume", volume_id="v1", staging_target_path=...,
           volume_capability=moor_csi.capability(fs_type="ext4"), volume_context={...})
    # a failed call raises moor_csi.CallError(code_name, message)

CLI (one call per run)::

    moor_csi.py --socket S RPC [--volume-id ID] [--staging P] [--target P] [--volume-path P]
        [--attr k=v]… [--secret k=v]… [--fs-type T] [--mount-flag F]… [--block]
        [--access-mode SINGLE_NODE_WRITER] [--readonly] [--pod-uid UID] [--pod-name N]
        [--pod-namespace NS] [--required-bytes N] [--timeout S] [--proto FILE] [--stub-cache DIR]

Output, stable for scripts:

* success: exit 0, the response as one JSON object on stdout. Every scalar field of the
  response message is present (proto3 defaults included, under the proto's snake_case
  names); 64-bit integers are JSON numbers; enums are their value names; a sub-message
  appears only when the plugin set it; maps are objects, repeated fields lists.
* a gRPC error: exit 1, nothing on stdout, one line on stderr: ``CODE_NAME: message``
  (``INVALID_ARGUMENT: missing_argument: …``; ``UNAVAILABLE: …`` when nothing listens).
* a usage error or a proto that does not compile: exit 2, the reason on stderr.

``--pod-uid`` adds the keys kubelet puts in ``volume_context`` for a driver with
``podInfoOnMount: true`` (pod name, namespace, uid, service account, ephemeral=false).
"""

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile

# grpc/protobuf are imported lazily (in Client), so --help works without them and a
# missing package is reported as one clear line.

RPCS = {
    "GetPluginInfo": "Identity",
    "GetPluginCapabilities": "Identity",
    "Probe": "Identity",
    "ControllerGetCapabilities": "Controller",
    "NodeStageVolume": "Node",
    "NodeUnstageVolume": "Node",
    "NodePublishVolume": "Node",
    "NodeUnpublishVolume": "Node",
    "NodeGetVolumeStats": "Node",
    "NodeExpandVolume": "Node",
    "NodeGetCapabilities": "Node",
    "NodeGetInfo": "Node",
}

DEFAULT_PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto", "csi.proto")


class SetupError(Exception):
    """The client cannot run: a missing package or a proto that does not compile."""


class CallError(Exception):
    """A call answered with a gRPC status other than OK."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _import_stubs(directory, module, proto_path):
    sys.path.insert(0, directory)
    try:
        return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")
    except ImportError as e:
        raise SetupError(f"the stubs generated from {proto_path} do not import: {e}") from None
    finally:
        sys.path.remove(directory)


def compile_proto(proto_path, cache=None):
    """Generate the Python stubs of ``proto_path``; return (pb2, pb2_grpc).

    Into a temp dir removed once imported; or, with ``cache`` (a directory), into
    ``cache/<sha256 of the proto>/`` reused by later runs (a slow guest pays protoc once).
    """
    proto_path = os.path.abspath(proto_path)
    if not os.path.isfile(proto_path):
        raise SetupError(f"no proto file at {proto_path}")
    src_dir, name = os.path.split(proto_path)
    # protoc names the module after the file, with what Python cannot import replaced.
    module = os.path.splitext(name)[0].replace("-", "_").replace(".", "_")
    cached = None
    if cache:
        with open(proto_path, "rb") as f:
            cached = os.path.join(cache, hashlib.sha256(f.read()).hexdigest()[:16])
        if os.path.isfile(os.path.join(cached, f"{module}_pb2_grpc.py")):
            return _import_stubs(cached, module, proto_path)
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:
        raise SetupError(f"grpc_tools is missing ({e}): install python3-grpc-tools") from None
    # The well-known types (descriptor.proto, wrappers.proto) ship inside grpc_tools.
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    if cache:
        os.makedirs(cache, exist_ok=True)
    out = tempfile.mkdtemp(prefix="moor-csi-py.", dir=cache)
    try:
        rc = protoc.main(
            ["protoc", f"-I{src_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", name]
        )
        if rc != 0:
            raise SetupError(f"grpc_tools.protoc failed (exit {rc}) on {proto_path}")
        if cached:
            try:
                os.rename(out, cached)  # atomic: a concurrent run finds all or nothing
                out = None
            except OSError:
                pass  # another run won the race: its stubs are the same
            return _import_stubs(cached, module, proto_path)
        return _import_stubs(out, module, proto_path)
    finally:
        # Imported modules live on in memory: the generated files are not needed again.
        if out:
            shutil.rmtree(out, ignore_errors=True)


def to_dict(msg):
    """A message as plain data, by the stable rules in the module doc."""
    from google.protobuf.descriptor import FieldDescriptor as F

    def value(field, v):
        if field.type == F.TYPE_MESSAGE:
            return to_dict(v)
        if field.type == F.TYPE_ENUM:
            named = field.enum_type.values_by_number.get(v)
            return named.name if named else v
        if field.type == F.TYPE_BYTES:
            return v.hex()
        return v

    out = {}
    for field in msg.DESCRIPTOR.fields:
        v = getattr(msg, field.name)
        if field.label == F.LABEL_REPEATED:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                vf = entry.fields_by_name["value"]
                out[field.name] = {k: value(vf, v[k]) for k in sorted(v)}
            else:
                out[field.name] = [value(field, x) for x in v]
        elif field.type == F.TYPE_MESSAGE or field.containing_oneof is not None:
            if msg.HasField(field.name):
                out[field.name] = value(field, v)
        else:
            out[field.name] = value(field, v)
    return out


def capability(fs_type=None, mount_flags=(), block=False, access_mode="SINGLE_NODE_WRITER"):
    """A VolumeCapability as keyword data for ``Client.call`` (built against the proto)."""
    cap = {"access_mode": {"mode": access_mode}}
    if block:
        cap["block"] = {}
    else:
        cap["mount"] = {"fs_type": fs_type or "", "mount_flags": list(mount_flags)}
    return cap


def pod_info(uid, name=None, namespace="default"):
    """The volume_context keys kubelet adds for podInfoOnMount drivers at NodePublishVolume."""
    return {
        "csi.storage.k8s.io/pod.name": name or f"pod-{uid[:8]}",
        "csi.storage.k8s.io/pod.namespace": namespace,
        "csi.storage.k8s.io/pod.uid": uid,
        "csi.storage.k8s.io/serviceAccount.name": "default",
        "csi.storage.k8s.io/ephemeral": "false",
    }


def fill(msg, data):
    """Set ``msg``'s fields from ``data`` (dicts for sub-messages, enum names as strings)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    fields = msg.DESCRIPTOR.fields_by_name
    for key, v in data.items():
        if key not in fields:
            raise SetupError(f"{msg.DESCRIPTOR.full_name} has no field {key} in the compiled proto")
        field = fields[key]
        target = getattr(msg, key)
        if field.label == F.LABEL_REPEATED:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                target.update(v)
            elif field.type == F.TYPE_MESSAGE:
                for item in v:
                    fill(target.add(), item)
            else:
                target.extend(v)
        elif field.type == F.TYPE_MESSAGE:
            target.SetInParent()  # an empty sub-message (BlockVolume {}) is still "set"
            fill(target, v)
        elif field.type == F.TYPE_ENUM and isinstance(v, str):
            if v not in field.enum_type.values_by_name:
                raise SetupError(f"{field.enum_type.full_name} has no value {v}")
            setattr(msg, key, field.enum_type.values_by_name[v].number)
        else:
            setattr(msg, key, v)
    return msg


class Client:
    """One persistent gRPC channel to a CSI plugin's Unix socket, as kubelet keeps."""

    def __init__(self, socket, proto=DEFAULT_PROTO, timeout=60.0, stub_cache=None):
        try:
            import grpc
        except ImportError as e:
            raise SetupError(f"grpcio is missing ({e}): install python3-grpcio") from None
        self._grpc = grpc
        self.pb2, self.pb2_grpc = compile_proto(proto, stub_cache)
        self.timeout = timeout
        # kubelet ≥ 1.26 sends "localhost" as :authority; Rust's h2 refuses a socket path.
        self.channel = grpc.insecure_channel(
            f"unix://{os.path.abspath(socket)}", options=[("grpc.default_authority", "localhost")]
        )
        self._stubs = {}

    def close(self):
        self.channel.close()

    def call(self, rpc, **request):
        """Call ``rpc`` with the request fields given; the response as a dict."""
        service = RPCS.get(rpc)
        if service is None:
            raise SetupError(f"unknown RPC {rpc} (one of: {', '.join(RPCS)})")
        if service not in self._stubs:
            stub = getattr(self.pb2_grpc, f"{service}Stub", None)
            if stub is None:
                raise SetupError(f"the compiled proto has no service {service}")
            self._stubs[service] = stub(self.channel)
        method = getattr(self._stubs[service], rpc, None)
        req_type = getattr(self.pb2, f"{rpc}Request", None)
        if method is None or req_type is None:
            raise SetupError(f"the compiled proto has no {service}.{rpc}")
        req = fill(req_type(), request)
        try:
            return to_dict(method(req, timeout=self.timeout))
        except self._grpc.RpcError as e:
            raise CallError(e.code().name, e.details() or "") from None


def key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want key=value, got {text!r}")
    return key, value


def request_from_args(args):
    """The request fields a kubelet would send for this RPC, from the CLI flags."""
    req = {}
    if args.volume_id is not None:
        req["volume_id"] = args.volume_id
    if args.staging is not None:
        req["staging_target_path"] = args.staging
    if args.target is not None:
        req["target_path"] = args.target
    if args.volume_path is not None:
        req["volume_path"] = args.volume_path
    context = dict(args.attr)
    if args.pod_uid:
        context.update(pod_info(args.pod_uid, args.pod_name, args.pod_namespace))
    if context:
        req["volume_context"] = context
    if args.secret:
        req["secrets"] = dict(args.secret)
    if args.readonly:
        req["readonly"] = True
    if args.required_bytes is not None:
        req["capacity_range"] = {"required_bytes": args.required_bytes}
    wants_cap = args.rpc in ("NodeStageVolume", "NodePublishVolume")
    if wants_cap or args.block or args.fs_type or args.mount_flag or args.access_mode:
        if not args.no_capability:
            req["volume_capability"] = capability(
                args.fs_type, args.mount_flag, args.block, args.access_mode or "SINGLE_NODE_WRITER"
            )
    return req


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="the plugin's Unix socket")
    p.add_argument("rpc", choices=sorted(RPCS))
    p.add_argument("--volume-id")
    p.add_argument("--staging", help="staging_target_path")
    p.add_argument("--target", help="target_path")
    p.add_argument("--volume-path", help="volume_path (NodeGetVolumeStats, NodeExpandVolume)")
    p.add_argument("--attr", type=key_value, action="append", default=[], help="volume_context key=value")
    p.add_argument("--secret", type=key_value, action="append", default=[], help="secrets key=value")
    p.add_argument("--fs-type")
    p.add_argument("--mount-flag", action="append", default=[])
    p.add_argument("--block", action="store_true", help="a raw block capability")
    p.add_argument("--access-mode", help="VolumeCapability.AccessMode.Mode name")
    p.add_argument("--no-capability", action="store_true", help="send no volume_capability")
    p.add_argument("--readonly", action="store_true")
    p.add_argument("--pod-uid")
    p.add_argument("--pod-name")
    p.add_argument("--pod-namespace", default="default")
    p.add_argument("--required-bytes", type=int)
    p.add_argument("--timeout", type=float, default=60.0, help="per-call deadline, seconds")
    p.add_argument("--proto", default=os.environ.get("MOOR_CSI_PROTO", DEFAULT_PROTO))
    p.add_argument(
        "--stub-cache",
        default=os.environ.get("MOOR_CSI_STUB_CACHE"),
        help="keep the generated stubs here, keyed by the proto's hash (default: regenerate each run)",
    )
    args = p.parse_args(argv)
    try:
        client = Client(args.socket, args.proto, args.timeout, args.stub_cache)
        reply = client.call(args.rpc, **request_from_args(args))
    except SetupError as e:
        print(f"moor_csi: {e}", file=sys.stderr)
        return 2
    except CallError as e:
        print(f"{e.code}: {e.message}", file=sys.stderr)
        return 1
    json.dump(reply, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
