"""Assembles moor's node image from extracted Debian packages (packaging/image/build).

The root file system holds moor, the files `files` lists and the shared libraries those
need (their ELF NEEDED entries, followed to the end), in Debian's merged-/usr layout. It is
written as one deterministic layer (sorted entries, root-owned, dated SOURCE_DATE_EPOCH),
then as an archive that is an OCI image layout and a docker-archive at once.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

BIN_DIRS = ["usr/sbin", "sbin", "usr/bin", "bin"]
LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64"]


def needed(path):
    """The sonames an ELF file asks for ([] for scripts and static files)."""
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True)
    libs = []
    for line in out.stdout.splitlines():
        if "(NEEDED)" in line:
            libs.append(line.split("[", 1)[1].split("]", 1)[0])
    return libs


def interpreter(path):
    out = subprocess.run(["readelf", "-l", path], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if "Requesting program interpreter" in line:
            return line.split(":", 1)[1].strip(" ]")
    return None


def find(pkgs, dirs, name):
    for d in dirs:
        p = os.path.join(pkgs, d, name)
        if os.path.lexists(p):
            return os.path.join(d, name)
    sys.exit(f"assemble: {name} is in none of the packages ({', '.join(dirs)})")


def resolve(pkgs, rel):
    """Follows symlinks inside the package tree; returns the real file's relative path."""
    seen = 0
    while os.path.islink(os.path.join(pkgs, rel)):
        target = os.readlink(os.path.join(pkgs, rel))
        rel = os.path.normpath(
            target.lstrip("/") if target.startswith("/") else os.path.join(os.path.dirname(rel), target)
        )
        seen += 1
        if seen > 20:
            sys.exit(f"assemble: symlink loop at {rel}")
    return rel


def usr(rel):
    """Where a package path lands in a merged-/usr tree."""
    for top in ("bin", "sbin", "lib", "lib64"):
        if rel == top or rel.startswith(top + "/"):
            return "usr/" + rel
    return rel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", required=True)
    ap.add_argument("--files", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tags", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    pkgs = a.packages

    files = {}  # image path -> ("file", host path) | ("link", target)
    todo = []
    for line in open(a.files):
        line = line.split("#", 1)[0].split()
        if not line:
            continue
        kind, name = line[0], line[1]
        if kind == "bin":
            rel = find(pkgs, BIN_DIRS, name)
            real = resolve(pkgs, rel)
            files["usr/" + ("sbin" if "sbin" in rel else "bin") + "/" + name] = ("file", os.path.join(pkgs, real))
            todo.append(os.path.join(pkgs, real))
        elif kind == "link":
            files["usr/sbin/" + name] = ("link", line[2])
        elif kind == "etc":
            files["etc/" + name] = ("file", os.path.join(pkgs, "etc", name))
        else:
            sys.exit(f"assemble: unknown kind {kind} in {a.files}")
    files["usr/local/bin/moor"] = ("file", a.binary)
    # A static moor needs nothing; a dynamic one (the VM lab's debug build) brings its libc.
    todo.append(a.binary)

    done = set()
    while todo:
        f = todo.pop()
        if f in done:
            continue
        done.add(f)
        interp = interpreter(f)
        if interp:
            irel = interp.lstrip("/")
            real = resolve(pkgs, irel)
            files[usr(real)] = ("file", os.path.join(pkgs, real))
            if usr(irel) != usr(real):
                files[usr(irel)] = ("link", "/" + usr(real))
        for so in needed(f):
            found = find(pkgs, LIB_DIRS, so)
            real = resolve(pkgs, found)
            files[usr(real)] = ("file", os.path.join(pkgs, real))
            soname = usr(os.path.join(os.path.dirname(found), so))
            if soname != usr(real):
                files[soname] = ("link", os.path.relpath("/" + usr(real), "/" + os.path.dirname(soname)))
            todo.append(os.path.join(pkgs, real))

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, kind, data=None, target=None, mode=0o755):
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = epoch, 0, 0, "root", "root"
            ti.mode = mode
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.SYMTYPE, target
                t.addfile(ti)
            else:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))

        dirs = {"etc", "tmp", "run", "var", "var/lib", "usr", "usr/local", "usr/local/bin", "dev", "proc", "sys"}
        for p in files:
            d = os.path.dirname(p)
            while d:
                dirs.add(d)
                d = os.path.dirname(d)
        entries = [(d, "dir") for d in dirs] + [(p, v) for p, v in files.items()]
        entries += [(top, ("link", "usr/" + top)) for top in ("bin", "sbin", "lib", "lib64")]
        etc = {
            "etc/passwd": b"root:x:0:0:root:/root:/usr/sbin/nologin\n",
            "etc/group": b"root:x:0:\n",
            "etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\n",
        }
        entries += [(p, ("data", b)) for p, b in etc.items()]
        for name, v in sorted(entries, key=lambda e: e[0]):
            if v == "dir":
                add(name, "dir", mode=0o1777 if name == "tmp" else 0o755)
            elif v[0] == "link":
                add(name, "link", target=v[1])
            elif v[0] == "data":
                add(name, "file", data=v[1], mode=0o644)
            else:
                with open(v[1], "rb") as fh:
                    data = fh.read()
                # The package's own mode (the dynamic loader must stay executable).
                mode = os.stat(v[1]).st_mode & 0o777
                add(name, "file", data=data, mode=mode)
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    # Compressed with a fixed mtime, so the same layer gives the same blob.
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=epoch, compresslevel=9) as g:
        g.write(layer_bytes)
    layer_gz = gz.getvalue()
    layer_digest = hashlib.sha256(layer_gz).hexdigest()

    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"],
            "Cmd": ["/usr/local/bin/moor", "daemon"],
            "Labels": {"org.opencontainers.image.title": "moor"},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        "history": [{"created": created, "created_by": "packaging/image/build"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + layer_digest,
                "size": len(layer_gz),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    tags = a.tags.split(",")
    refs = [f"{a.name}:{t}" for t in tags]
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
            for ref, tag in zip(refs, tags)
        ],
    }
    docker = [
        {
            "Config": "blobs/sha256/" + config_digest,
            "RepoTags": refs,
            "Layers": ["blobs/sha256/" + layer_digest],
        }
    ]
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        def put(name, data):
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode, ti.size = epoch, 0o644, len(data)
            t.addfile(ti, io.BytesIO(data))

        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mtime, ti.mode = tarfile.DIRTYPE, epoch, 0o755
            t.addfile(ti)
        put("blobs/sha256/" + config_digest, config_bytes)
        put("blobs/sha256/" + layer_digest, layer_gz)
        put("blobs/sha256/" + manifest_digest, manifest_bytes)
        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", json.dumps(index, sort_keys=True).encode())
        put("manifest.json", json.dumps(docker, sort_keys=True).encode())
    os.replace(tmp, a.out)
    print(
        f"assemble: {len(files)} files, layer {len(layer_bytes) / 1e6:.1f} MB "
        f"({len(layer_gz) / 1e6:.1f} MB compressed), refs {', '.join(refs)}"
    )


if __name__ == "__main__":
    main()
