"""keras-hub CausalLMs: `fused_causal_lm` against keras-hub's own `compile()` + `fit`, CPU.

Tiny random backbones (1 layer, hidden 16, or `--hidden`) with the real vocabularies, so that
the head dominates: Gemma (V = 256000, tied embedding) and Llama-3 (V = 128256, untied
`reverse_embeddings`); B x T = 8 x 512 = 4096 tokens, 10% of them padding. Each configuration
runs in its own subprocess (clean resident memory) and reports:

- `peak_rss_gib`: the process's resident high-water mark after its training steps (libraries,
  model and all steps included), and `step_peak_extra_gib`: the high-water mark of the timed
  steps above the resident size just before them;
- `step_s`: the median time of `--steps` training steps (`train_on_batch`, Adam), after one
  step that compiles;
- `loss`: the loss of the first step, and `kept_fraction`: kept tokens / (B * T). keras-hub's
  `compile()` (SparseCategoricalCrossentropy, "sum_over_batch_size", the padding mask as sample
  weight) divides the kept tokens' sum by B * T; the fused head's `ignore_index` gives the
  kept-token mean, so `keras_hub_loss ~= fused_loss * kept_fraction` at the same weights.

Ratios are fused / keras-hub in the same run.

    python benchmarks/keras_hub.py                  # JAX, both models (~3 min idle, ~14 GiB peak)
    python benchmarks/keras_hub.py --quick          # V = 4096, to check the script
    python benchmarks/keras_hub.py --backend-name torch --models llama3
    python benchmarks/keras_hub.py --hidden 256     # a head less dominated by streaming the weight
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

# This file's name would shadow the keras_hub package for the imports below.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

MODELS = {"gemma": 256000, "llama3": 128256}
SETUPS = ("keras_hub_compile", "fused_causal_lm")


def build(model, vocab, hidden):
    import keras_hub

    tiny = dict(num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=hidden,
                intermediate_dim=2 * hidden)  # fmt: skip
    if model == "gemma":
        backbone = keras_hub.models.GemmaBackbone(vocabulary_size=vocab, head_dim=hidden // 2,
                                                  **tiny)  # fmt: skip
        return keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)
    backbone = keras_hub.models.Llama3Backbone(vocabulary_size=vocab, tie_word_embeddings=False,
                                               **tiny)  # fmt: skip
    return keras_hub.models.Llama3CausalLM(backbone, preprocessor=None)


def data(vocab, batch, seq):
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, vocab, size=(batch, seq + 1)).astype("int32")
    lengths = rng.integers(int(0.8 * seq), seq + 1, size=batch)  # ~10% right padding
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype("int32")
    x = {"token_ids": np.where(mask, tokens[:, :-1], 0).astype("int32"), "padding_mask": mask}
    # As keras-hub's preprocessor gives them: next tokens (0 at padding), the mask as weights.
    return x, np.where(mask, tokens[:, 1:], 0).astype("int32"), mask


def probe(args):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    vocab = args.vocab or MODELS[args.probe_model]
    causal_lm = build(args.probe_model, vocab, args.hidden)
    x, y, mask = data(vocab, args.batch, args.seq)
    if args.probe_setup == "keras_hub_compile":
        model = causal_lm
        model.compile(optimizer=keras.optimizers.Adam(1e-3))  # keras-hub's default loss
        step = lambda: model.train_on_batch(x, y, sample_weight=mask)  # noqa: E731
    else:
        from losskit.integrations.keras_hub import fused_causal_lm

        model = fused_causal_lm(causal_lm, chunk_size=args.chunk_size)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        labels = np.where(mask, y, -100).astype("int32")
        step = lambda: model.train_on_batch(x, labels)  # noqa: E731
    loss = float(np.asarray(step()).reshape(-1)[0])  # compiles; returns numpy (synchronised)
    before = common.reset_peak_rss()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "peak_rss_gib": common.peak_rss() / 2**30,
        "step_peak_extra_gib": (common.peak_rss() - before) / 2**30,
        "step_s": statistics.median(times),
        "step_times_s": times,
        "loss": loss,
        "kept_fraction": float(mask.mean()),
    }))  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-name", default="jax", choices=common.ALL_BACKENDS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=16, help="the backbone's hidden size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=None, help="override the real vocabulary")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="fused_causal_lm's chunk_size (default: its own choice)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--probe-model", choices=list(MODELS), help="internal: one configuration")
    parser.add_argument("--probe-setup", choices=SETUPS, help="internal: one configuration")
    args = parser.parse_args()
    if args.quick:
        args.vocab, args.batch, args.seq, args.steps = 4096, 2, 64, 2
    if args.probe_model:
        return probe(args)
    env = {**os.environ, "KERAS_BACKEND": args.backend_name}
    result = {"backend": args.backend_name, "chunk_size": args.chunk_size, "hidden": args.hidden,
              "tokens": args.batch * args.seq,
              "batch": args.batch, "seq": args.seq, "steps": args.steps, "models": {}}
    for model in args.models:
        rows = {}
        for setup in args.setups:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--probe-model", model,
                   "--probe-setup", setup]  # fmt: skip
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode:
                # A process killed for memory (returncode -9) leaves only log lines on stderr.
                rows[setup] = {"returncode": run.returncode,
                               "error": (run.stderr.strip().splitlines() or [""])[-1][:300]}
            else:
                rows[setup] = json.loads(run.stdout.strip().splitlines()[-1])
            print(model, setup, rows[setup], flush=True)
        base, fused = rows.get("keras_hub_compile"), rows.get("fused_causal_lm")
        if base and fused and "error" not in base and "error" not in fused:
            rows["ratios"] = {
                "peak_rss": fused["peak_rss_gib"] / base["peak_rss_gib"],
                "step_peak_extra": fused["step_peak_extra_gib"] / base["step_peak_extra_gib"],
                "step_time": fused["step_s"] / base["step_s"],
                "keras_hub_loss_over_fused_loss": base["loss"] / fused["loss"],
            }
        result["models"][model] = {"vocab": args.vocab or MODELS[model], **rows}
    result["machine"] = common.machine()
    name = "keras_hub.quick" if args.quick else f"keras_hub.{args.backend_name}"
    name += f".hidden{args.hidden}" if args.hidden != 16 else ""
    name += f".chunk{args.chunk_size}" if args.chunk_size else ""
    print(common.save(name, result))


if __name__ == "__main__":
    main()
