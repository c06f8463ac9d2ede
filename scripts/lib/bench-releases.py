#!/usr/bin/env python3
"""Two releases of a benchmark bundle, written under W/r1 and W/r2 (an OCI layout and a
bundle.yaml each): N images of one uncompressed layer of MIB MiB of noise; the second release
changes the first image and keeps the rest byte for byte.

usage: bench-releases.py W N MIB NAME
"""
import hashlib, io, json, os, random, sys, tarfile
w, n, mib, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(f"{layout}/blobs/sha256", exist_ok=True)
    with open(f"{layout}/blobs/sha256/{d}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{d}", "size": len(data)}
def image(layout, tag, payload):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("srv/data"); info.size = len(payload); info.mtime = 0
        t.addfile(info, io.BytesIO(payload))
    layer = buf.getvalue()
    diff = hashlib.sha256(layer).hexdigest()
    l = dict(blob(layout, layer), mediaType="application/vnd.oci.image.layer.v1.tar")
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]}, "config": {}}).encode()
    c = dict(blob(layout, cfg), mediaType="application/vnd.oci.image.config.v1+json")
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": c, "layers": [l]}).encode()
    return dict(blob(layout, m), mediaType="application/vnd.oci.image.manifest.v1+json", annotations={"org.opencontainers.image.ref.name": tag}, platform={"architecture": "amd64", "os": "linux"})
for rel in ("r1", "r2"):
    b = f"{w}/{rel}"; layout = f"{b}/layout"
    os.makedirs(layout, exist_ok=True)
    with open(f"{layout}/oci-layout", "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    refs = []
    for i in range(n):
        seed = f"{rel}-{i}" if (rel == "r2" and i == 0) else f"r1-{i}"
        r = random.Random(seed)
        payload = b"".join(r.randbytes(1 << 20) for _ in range(mib))
        refs.append(image(layout, f"a{i}", payload))
    with open(f"{layout}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": refs}, f)
    images = "".join(f"    - {{ref: example.com/bench/a{i}:1, source: 'oci:layout:a{i}'}}\n" for i in range(n))
    with open(f"{b}/bundle.yaml", "w") as f:
        f.write(f"apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: {name}, version: {rel}}}\nspec:\n  kubernetes: {{version: v1.37.2}}\n  images:\n{images}")
