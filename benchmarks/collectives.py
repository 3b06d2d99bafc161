"""JAX: the communication penalty plus gradient compiles to, per sharding layout.

Compiles `jax.value_and_grad` of `ortho_penalty` with the kernel sharded over a
1-D mesh of host devices, as `keras.distribution.ModelParallel` lays it out, and
counts the collectives in the compiled HLO with the bytes each produces per
device, against the size of one device's kernel shard. Nothing is timed: the
figures are what XLA compiles, the same on any machine.

    python benchmarks/collectives.py [--quick] [--devices 4] [--json out.json]

Runs in a process of its own: `--xla_force_host_platform_device_count` must be
set before JAX starts (run.py spawns it).
"""

import argparse
import json
import math
import os
import re
import sys

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"(?P<dtype>pred|[suf]\d+|bf16)\[(?P<dims>[\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2}

# name: (kernel shape, partition spec over the mesh axis "model", slice_axis)
LAYOUTS = {
    "heads, q/k/v": ((768, 12, 64), (None, "model", None), None),
    "heads, output": ((12, 64, 768), ("model", None, None), None),
    "Dense rows": ((1024, 1024), ("model", None), None),
    "Dense columns": ((1024, 1024), (None, "model"), None),
    "Dense columns, tall": ((4096, 1024), (None, "model"), None),
}
QUICK = {
    "heads, q/k/v": ((64, 4, 16), (None, "model", None), None),
    "heads, output": ((4, 16, 64), ("model", None, None), None),
    "Dense rows": ((64, 64), ("model", None), None),
    "Dense columns": ((64, 64), (None, "model"), None),
}


def collectives_in(hlo_text):
    """`[(op, bytes)]` for each collective of a compiled HLO module, in order.

    `bytes` is the size of the op's result on one device (a tuple's parts
    summed): what an all-gather assembles or an all-reduce sums.
    """
    found = []
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match is None:
            continue
        size = 0
        for array in _ARRAY.finditer(match["type"]):
            dtype = array["dtype"]
            width = _BYTES.get(dtype, int(dtype[1:]) // 8 if dtype[1:].isdigit() else 4)
            size += width * math.prod(int(d) for d in array["dims"].split(",") if d)
        found.append((match["op"], size))
    return found


def summarize(found):
    """`{op: {"count": n, "bytes": total}}` of the collectives found."""
    summary = {}
    for op, size in found:
        entry = summary.setdefault(op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
    return summary


def measure(layouts, devices):
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import keras_ortho

    mesh = Mesh(np.array(jax.devices()[:devices]), ("model",))
    rows = []
    for name, (shape, spec, slice_axis) in layouts.items():
        sharding = NamedSharding(mesh, PartitionSpec(*spec))
        kernel = jax.device_put(np.full(shape, 0.01, "float32"), sharding)
        # The output projection `(heads, head_dim, d_model)` is sliced per head
        # (axis 0) by the layer rule; here the weight is a bare array.
        axis = 0 if name == "heads, output" else slice_axis
        step = jax.jit(
            jax.value_and_grad(lambda w, axis=axis: keras_ortho.ortho_penalty(w, 0.01, slice_axis=axis)),
            in_shardings=sharding,
            out_shardings=(None, sharding),
        )
        found = collectives_in(step.lower(kernel).compile().as_text())
        rows.append(
            {
                "layout": name,
                "shape": list(shape),
                "spec": [s or "None" for s in spec],
                "shard_bytes": 4 * math.prod(shape) // devices,
                "collectives": summarize(found),
            }
        )
    return rows


def markdown(rows, devices):
    lines = [
        f"Collectives in the compiled penalty plus gradient, float32, {devices} devices; "
        "bytes are each op's result on one device.",
        "",
        "| layout | kernel | spec | shard | all-gather | all-reduce | all-to-all | collective-permute "
        "| reduce-scatter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for op in COLLECTIVES:
            entry = row["collectives"].get(op)
            cells.append("0" if entry is None else f"{entry['count']} ({_size(entry['bytes'])})")
        lines.append(
            f"| {row['layout']} | `{tuple(row['shape'])}` | `({', '.join(row['spec'])})` | "
            f"{_size(row['shard_bytes'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def _size(n):
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def run(quick):
    """The benchmark section: spawns this script with the host devices it needs."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "collectives.json")
        command = [sys.executable, os.path.abspath(__file__), "--json", out] + (["--quick"] if quick else [])
        subprocess.run(command, check=True, env={**os.environ, "KERAS_BACKEND": "jax"})
        with open(out) as f:
            return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small kernels")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    os.environ["KERAS_BACKEND"] = "jax"
    rows = measure(QUICK if args.quick else LAYOUTS, args.devices)
    result = {"devices": args.devices, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(markdown(rows, args.devices))


if __name__ == "__main__":
    main()
