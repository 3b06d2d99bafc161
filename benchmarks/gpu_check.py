"""The GPU check: correctness, a short fit and timings on a CUDA device, per backend.

    python benchmarks/gpu_check.py                     # on a GPU: JAX and PyTorch, ~3 minutes
    python benchmarks/gpu_check.py --device cpu --quick  # the same checks on the CPU (the tests run this)

For a machine with JAX and PyTorch (CUDA builds) and Keras, without TensorFlow.
Each backend runs in a process of its own, with its weights on the device:

1. value and gradient of `ortho_penalty` against the float64 numpy reference
   (`tests/reference.py`), in float32 and bfloat16, on several kernel shapes;
2. a short `fit` of a small attention model with `OrthoLogger`, whose records
   must match the reference of the weights it saw;
3. penalty plus gradient against autodiff, the two-matmul floor and the device's
   plain square matmul (GFLOP/s), as `backend_penalty` measures them.

Float32 tolerances are those of full float32 products: keras_ortho asks JAX for
full precision (no TF32) and PyTorch computes float32 matmuls in float32 by
default. Writes `benchmarks/results/gpu.md` (or `--out`), naming the device, and
exits non-zero when a check fails.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

CHECK_SHAPES = [(64, 8, 32), (256, 128), (32, 128), (3, 3, 16, 32), (8, 16, 64)]
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}


def device_name():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return device.platform, getattr(device, "device_kind", str(device))
    import torch

    if torch.cuda.is_available():
        return "gpu", torch.cuda.get_device_name(0)
    return "cpu", "CPU"


def check_values(log):
    """Value and gradient on the device against the float64 reference."""
    import keras
    import numpy as np
    import reference

    import keras_ortho

    backend = keras.backend.backend()
    rows = []
    for dtype, rtol in TOLERANCE.items():
        for shape in CHECK_SHAPES:
            w32 = np.random.default_rng(len(shape)).normal(scale=shape[0] ** -0.5, size=shape).astype("float32")
            w = keras.ops.cast(keras.ops.convert_to_tensor(w32), dtype)
            exact = keras.ops.convert_to_numpy(keras.ops.cast(w, "float32")).astype("float64")
            if backend == "jax":
                import jax

                value, grad = jax.value_and_grad(lambda x: keras_ortho.ortho_penalty(x, 0.1))(w)
            else:
                w = w.detach().requires_grad_(True)
                value = keras_ortho.ortho_penalty(w, 0.1)
                value.backward()
                grad = w.grad
            value = float(keras.ops.convert_to_numpy(keras.ops.cast(value, "float32")))
            grad = keras.ops.convert_to_numpy(keras.ops.cast(grad, "float32")).astype("float64")
            expected_value = reference.penalty(exact, 0.1)
            expected_grad = reference.gradient(exact, 0.1)
            value_error = abs(value - expected_value) / abs(expected_value)
            grad_error = np.abs(grad - expected_grad).max() / np.abs(expected_grad).max()
            ok = value_error <= rtol and grad_error <= rtol
            rows.append(
                {
                    "dtype": dtype,
                    "shape": list(shape),
                    "value_rel_error": value_error,
                    "grad_rel_error": grad_error,
                    "tolerance": rtol,
                    "ok": bool(ok),
                }
            )
            log(
                f"  {dtype:<8} {str(shape):<16} value {value_error:.1e}  gradient {grad_error:.1e}  "
                f"{'ok' if ok else 'FAILED'} (tolerance {rtol:g})"
            )
    return rows


def check_fit(log):
    """A short fit with OrthoLogger; its records against the reference of the final weights."""
    import keras
    import numpy as np
    import reference

    import keras_ortho

    keras.utils.set_random_seed(0)
    ortho = keras_ortho.OrthoRegularizer(0.05)
    inputs = keras.Input((16, 32))
    x = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, kernel_regularizer=ortho, name="mha")(inputs, inputs)
    outputs = keras.layers.Dense(4, kernel_regularizer=ortho, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    logger = keras_ortho.OrthoLogger(every_n_batches=4)
    rng = np.random.default_rng(0)
    history = model.fit(
        rng.normal(size=(256, 16, 32)).astype("float32"),
        rng.normal(size=(256, 4)).astype("float32"),
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[logger],
    )
    worst = 0.0
    for v in model.trainable_weights:
        if v.path in logger.errors:
            expected = reference.slice_errors(v.numpy(), attention_output=v.path.endswith("attention_output/kernel"))
            worst = max(worst, float(np.max(np.abs(logger.errors[v.path][-1] - expected) / expected)))
    kernel_device = str(
        getattr(model.trainable_weights[0].value, "device", None) or model.trainable_weights[0].value.devices()
    )
    ok = worst <= TOLERANCE["float32"] and len(logger.watched_paths) == 5 and len(logger.steps) == 4
    log(
        f"  fit: {len(logger.watched_paths)} kernels logged, {len(logger.steps)} batch records, "
        f"records vs reference {worst:.1e}, weights on {kernel_device}: {'ok' if ok else 'FAILED'}"
    )
    return {
        "kernels": len(logger.watched_paths),
        "batch_records": len(logger.steps),
        "records_rel_error": worst,
        "weights_on": kernel_device,
        "final_loss": history.history["loss"][-1],
        "ok": bool(ok),
    }


def run_worker(device, quick, out):
    import backend_penalty
    import keras

    platform, name = device_name()
    if device == "gpu" and platform != "gpu":
        raise SystemExit(
            f"gpu_check: {keras.backend.backend()} sees no GPU (its device: {name}); "
            "use --device cpu to run the checks on the CPU"
        )
    print(f"{keras.backend.backend()} on {name}", flush=True)
    result = {
        "backend": keras.backend.backend(),
        "device": name,
        "platform": platform,
        "values": check_values(print),
        "fit": check_fit(print),
    }
    result["timing"] = backend_penalty.run(quick, dtypes=("float32", "bfloat16"))
    pathlib.Path(out).write_text(json.dumps(result))


def markdown(results, stamp):
    from harness import markdown_table

    lines = ["# keras_ortho GPU check", ""]
    devices = sorted({r["device"] for r in results})
    lines += [f"Device: {', '.join(devices)}. {stamp}", ""]
    for r in results:
        values_ok = all(v["ok"] for v in r["values"])
        lines += [
            f"## {r['backend']} on {r['device']}",
            "",
            f"Value and gradient against the float64 reference, {len(r['values'])} cases: "
            + ("all within tolerance" if values_ok else "FAILED"),
            "",
            markdown_table(
                ["dtype", "shape", "value rel. error", "gradient rel. error", "tolerance"],
                [
                    [
                        v["dtype"],
                        "x".join(map(str, v["shape"])),
                        f"{v['value_rel_error']:.1e}",
                        f"{v['grad_rel_error']:.1e}",
                        f"{v['tolerance']:g}",
                    ]
                    for v in r["values"]
                ],
            ),
            "",
            f"fit with OrthoLogger: {r['fit']['kernels']} kernels, {r['fit']['batch_records']} batch "
            f"records, records vs reference {r['fit']['records_rel_error']:.1e}, weights on "
            f"{r['fit']['weights_on']}: {'ok' if r['fit']['ok'] else 'FAILED'}",
            "",
        ]
        t = r["timing"]
        lines += [
            markdown_table(
                [
                    "kernel",
                    "dtype",
                    "ours ms",
                    "autodiff ms",
                    "floor ms",
                    "ours/autodiff",
                    "ours/floor",
                    "ours GFLOP/s",
                ],
                [
                    [
                        row["kernel"],
                        row["dtype"],
                        f"{row['ms']['ours']:.3f}",
                        f"{row['ms']['autodiff']:.3f}",
                        f"{row['ms']['floor']:.3f}",
                        f"{row['ours/autodiff']:.2f}",
                        f"{row['ours/floor']:.2f}",
                        f"{row['ours_gflops']:.0f}",
                    ]
                    for row in t["rows"]
                ],
            ),
            "",
            f"Plain square matmul ({t['matmul_size']}x{t['matmul_size']}): "
            + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in t["matmul_gflops"].items())
            + ".",
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="keras_ortho GPU check (JAX and PyTorch)")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--backends", default="jax,torch", help="comma-separated: jax, torch")
    parser.add_argument("--quick", action="store_true", help="small timing shapes, few rounds")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "gpu.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.device, args.quick, args.worker_out)
        return 0
    backends = [b for b in args.backends.split(",") if b]
    if set(backends) - {"jax", "torch"}:
        parser.error(f"--backends takes jax and torch. Received: {args.backends}")

    import harness

    results = []
    env = {**os.environ}
    if args.device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryDirectory() as directory:
        for backend in backends:
            out = os.path.join(directory, f"{backend}.json")
            command = [sys.executable, __file__, "--worker", backend, "--worker-out", out, "--device", args.device]
            subprocess.run(
                command + (["--quick"] if args.quick else []), check=True, env={**env, "KERAS_BACKEND": backend}
            )
            results.append(json.loads(pathlib.Path(out).read_text()))
    m = harness.machine_stamp()
    stamp = (
        f"Run {m['date']}: {m['cpu']} host, Python {m['python']}, Keras {m['keras']}, "
        f"JAX {m['jax']}, PyTorch {m['torch']}" + ("; quick mode." if args.quick else ".")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, stamp))
    failed = [r["backend"] for r in results if not (all(v["ok"] for v in r["values"]) and r["fit"]["ok"])]
    print(f"wrote {args.out}" + (f"; FAILED on {failed}" if failed else "; every check passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
