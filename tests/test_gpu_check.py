"""benchmarks/gpu_check.py on a CPU: the whole script tiny (demo preset) without the packages the GPU
machine lacks, and, without CUDA, the logic its GPU numbers rest on: the decoder runner's CUDA-graph path
(buckets, padding rows, static inputs) with the graph calls replaced by eager replays, the s2mel velocity
graph wrapper, the check's own graph measurements, and the float16-vs-float32 comparison of decodings."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import (
    CPU,
    S2MEL_MODES,
    VOCODER_MODES,
    Budget,
    Check,
    GraphedVelocity,
    StreamTimes,
    _StandInModule,
    clip_positions,
    compare_sequences,
    decoder_part,
    dit_velocity,
    eager_capture,
    fifo_schedule,
    randomise_,
    s2mel_part,
    stream_summary,
    summarize_comparisons,
)
from indextts2.engine import DecoderEngine, DecodeRequest, SamplingConfig
from indextts2.engine.cache import KVCacheManager
from indextts2.engine.runner import CudaDecodeGraphs, ModelRunner, batch_buckets
from indextts2.engine.s2mel_batch import S2MelBatcher, S2MelRequest
from indextts2.networks.gpt import Conv1D, UnifiedVoice, build_gpt
from indextts2.networks.s2mel import build_s2mel
from indextts2.networks.semantic_codec import build_semantic_codec
from indextts2.presets import DEMO_CONFIG, PRESETS, SEMANTIC_DIM

REPO_ROOT = Path(__file__).resolve().parent.parent
# Packages our environment has that the GPU machine's stock Python does not (or, transformers, that the
# check must not import beyond its stand-in): the smoke run refuses to import them.
ABSENT_ON_GPU_MACHINE = ["soundfile", "soxr", "transformers", "tritonclient", "fastapi", "uvicorn", "sentry_sdk",
                         "pytriton", "multipart", "tn"]
BOOTSTRAP = """
import importlib.abc, runpy, sys
absent = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)", name=name)
        return None
sys.meta_path.insert(0, Absent())
sys.argv = ["benchmarks/gpu_check.py", *sys.argv[2:]]
runpy.run_module("benchmarks.gpu_check", run_name="__main__", alter_sys=True)
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------
# The script, tiny
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, "-c", BOOTSTRAP, ",".join(ABSENT_ON_GPU_MACHINE),
               "--preset", "demo", "--device", "cpu", "--quick", "--out", str(out)]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return {
        "stdout": completed.stdout,
        "report": json.loads((out / "gpu_check_demo_cpu_quick.json").read_text()),
        "markdown": (out / "gpu_check_demo_cpu_quick.md").read_text(),
    }


def test_smoke_run_reports_every_part_ok_with_hardware_and_the_stand_ins(smoke):
    report = smoke["report"]
    assert report["hardware"]["torch"] == torch.__version__ and report["hardware"]["gpu"] is None
    assert report["hardware"]["numpy"] and report["hardware"]["cpu_count"] >= 1
    assert set(report["import_stand_ins"]) >= {"indextts2.networks.semantic_encoder", "transformers", "soundfile",
                                               "soxr"}
    assert report["setup"]["status"] == "ok" and set(report["setup"]["networks"]) == {"gpt", "s2mel", "codec",
                                                                                       "bigvgan"}
    assert list(report["parts"]) == ["decoder", "s2mel", "bigvgan", "end_to_end"]
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))
        assert part["seconds"] > 0 and not part.get("errors"), (name, part.get("errors"))
    for name in report["parts"]:
        assert f"## {name}" in smoke["markdown"]


def test_smoke_decoder_part_has_numbers_or_a_reason_for_each_measurement(smoke):
    decoder = smoke["report"]["parts"]["decoder"]
    kv = decoder["kv_cache"]
    gpt = DEMO_CONFIG["gpt"]
    assert kv["bytes_per_slot"]["float16"] == gpt["layers"] * 2 * kv["max_seq_len"] * gpt["model_dim"] * 2
    assert kv["bytes_per_slot"]["float32"] == 2 * kv["bytes_per_slot"]["float16"]
    assert "no CUDA" in decoder["skipped"]["cuda_graphs_vs_eager"] and decoder["cuda_graphs_vs_eager"] == []
    assert "no CUDA" in decoder["skipped"]["step_time cuda_graphs"]

    fp = decoder["float16_vs_float32"]
    assert fp["sequences"] == 4 and fp["steps"] == 20 and 0 <= fp["sequences_equal"] <= 4
    assert 0 <= fp["latent_rel_error_max"] < 0.05  # float16 rounding, not a broken cast
    assert all(row["codes"] == 20 and row["compared_latents"] >= 1 for row in fp["per_sequence"])

    positions = clip_positions((10, 500, 1500), kv["max_seq_len"])
    assert sorted((r["batch"], r["position"]) for r in decoder["step_time"]) == [
        (b, p) for b in (1, 4) for p in positions]
    assert all(r["runner"] == "eager" and r["step_ms"] > 0 and r["codes_per_s"] > 0 for r in decoder["step_time"])
    assert [r["batch"] for r in decoder["sampling"]] == [1, 4]
    assert all(r["official_ms"] > 0 and r["greedy_ms"] > 0 for r in decoder["sampling"])
    assert [r["batch"] for r in decoder["engine"]] == [1, 4]
    assert all(r["decode_codes_per_s"] > 0 and r["end_to_end_codes_per_s"] > 0 for r in decoder["engine"])


def test_smoke_s2mel_and_bigvgan_parts_measure_every_precision_mode(smoke):
    s2mel = smoke["report"]["parts"]["s2mel"]
    assert sorted((r["mode"], r["batch"]) for r in s2mel["rows"]) == sorted(
        (mode, batch) for mode in S2MEL_MODES for batch in (1, 2))
    assert all(r["runner"] == "eager" and r["ms_per_segment"] > 0 for r in s2mel["rows"])
    for row in s2mel["rows"]:  # request 0's mel against float32 at the same batch
        if row["mode"] == "float32":
            assert row["vs_float32"]["rel_error"] == 0.0
        assert 0 <= row["vs_float32"]["rel_error"] < 0.05, row
    assert "no CUDA" in s2mel["skipped"]["cuda_graph"] and "no CUDA" in s2mel["skipped"]["torch_compile"]
    assert [row["batch"] for row in s2mel["best"]] == [1, 2]

    bigvgan = smoke["report"]["parts"]["bigvgan"]
    assert [r["mode"] for r in bigvgan["rows"]] == list(VOCODER_MODES)
    assert all(r["ms_per_audio_second"] > 0 for r in bigvgan["rows"])
    assert all(math.isfinite(r["snr_db_vs_float32"]) for r in bigvgan["rows"][1:])


def test_smoke_end_to_end_runs_both_systems_at_each_concurrency_with_the_same_audio(smoke):
    e2e = smoke["report"]["parts"]["end_to_end"]
    runs = {(r["system"], r["streams"]): r for r in e2e["runs"]}
    assert sorted(runs) == [(system, n) for system in ("eager", "ours") for n in (1, 4)]
    for (system, streams), run in runs.items():
        # min_codes = max_codes: every stream has exactly the same audio in both systems.
        assert run["audio_s"] == pytest.approx(streams * e2e["setup"]["audio_s_per_stream"], rel=1e-6)
        assert run["rtf_p50"] > 0 and run["audio_s_per_s"] > 0 and run["extrapolated_streams"] == 0
        assert 0 < run["first_audio_p50_s"] <= run["latency_p50_s"] <= run["wall_s"]
        assert (run["first_codes_p50_s"] is not None) == (system == "ours")
    assert [row["streams"] for row in e2e["ratios"]] == [1, 4]


# ---------------------------------------------------------------------------------------------------
# The decoder runner's CUDA-graph path, on the CPU
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def cpu_graph_calls(monkeypatch):
    """torch.cuda's stream and graph calls as no-ops, so that `CudaDecodeGraphs` builds on the CPU (its
    warm-up and capture run eagerly); `eager_replays` then makes each graph's replay recompute what was
    captured."""

    class Stream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, other):
            pass

    class Graph:
        def pool(self):
            return None

        def replay(self):
            raise AssertionError("eager_replays was not applied")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, pool=None, capture_error_mode=None: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


def eager_replays(graphs: CudaDecodeGraphs) -> CudaDecodeGraphs:
    """A replay reads the static inputs and writes the same output tensor and cache rows, as the captured
    graph does."""
    for bucket, graph in graphs.graphs.items():
        graph.replay = lambda bucket=bucket: graphs.hidden[bucket].copy_(graphs._forward(bucket))
    return graphs


@pytest.fixture(scope="module")
def gpt() -> UnifiedVoice:
    model = build_gpt(DEMO_CONFIG["gpt"], feature_dim=SEMANTIC_DIM)
    randomise_(model, seed=0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, Conv1D):  # strong attention: a wrong key, mask or position shows in the output
                layer.weight.normal_(0.0, 0.15)
    return model.eval()


def prefixes(model: UnifiedVoice, lengths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, model.model_dim, generator=g) for n in lengths]


def test_batch_buckets_are_powers_of_two_then_the_slot_count():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(128) == [1, 2, 4, 8, 16, 32, 64, 128]


@torch.inference_mode()
def test_graph_step_pads_to_its_bucket_with_free_rows_and_matches_the_eager_step(gpt, cpu_graph_calls):
    slots, max_len = 8, 48
    eager_cache = KVCacheManager(gpt, slots, max_len, torch.float32, "cpu")
    graph_cache = KVCacheManager(gpt, slots, max_len, torch.float32, "cpu")
    eager = ModelRunner(gpt, eager_cache, use_cuda_graphs=False)
    graphed = ModelRunner(gpt, graph_cache, use_cuda_graphs=False)
    graphed.cuda_graphs = eager_replays(CudaDecodeGraphs(gpt, graph_cache))
    assert graphed.cuda_graphs.buckets == [1, 2, 4, 8]

    lengths = [5, 9, 7, 12, 6]  # prefix tokens per sequence (the start code comes on top)
    for runner, cache in ((eager, eager_cache), (graphed, graph_cache)):
        for prefix in prefixes(gpt, lengths):
            runner.prefill(cache.allocate(), prefix)
    written = [n + 1 for n in lengths]  # positions [0, n] hold the prefix and the start code

    def step(live: list[int], code: int) -> tuple[torch.Tensor, int]:
        out = []
        for runner in (eager, graphed):
            hidden, rows = runner.decode(live, [code + s for s in live], [len(live) + s for s in live],
                                         [written[s] for s in live])
            out.append((hidden, rows))
        (eager_hidden, eager_rows), (graph_hidden, graph_rows) = out
        torch.testing.assert_close(graph_hidden, eager_hidden, atol=1e-5, rtol=1e-5)
        for s in live:
            written[s] += 1
        assert eager_rows == max(live) + 1
        return graph_hidden, graph_rows

    # Five live rows: the graph of bucket 8 runs, rows 5..7 are padding.
    _, rows = step([0, 1, 2, 3, 4], code=3)
    assert rows == 8
    static = graphed.cuda_graphs
    assert static.lengths[5:8].tolist() == [1, 1, 1] and static.cache_positions[5:8].tolist() == [0, 0, 0]

    # Rows 3 and 4 finish: bucket 4. Row 3 was live in the last call and is padding now: its static
    # inputs must be reset, or the graph would write the freed row at its old position.
    for s in (3, 4):
        eager_cache.release(s, written[s])
        graph_cache.release(s, written[s])
    _, rows = step([0, 1, 2], code=11)
    assert rows == 4
    assert static.codes[3].item() == 0 and static.lengths[3].item() == 1 and static.cache_positions[3].item() == 0
    for layer in graph_cache.layers:
        assert not layer.k[3:, :, 1:].any() and not layer.v[3:, :, 1:].any()  # padding touched position 0 only

    # A free slot inside the span (1): computed as padding, dropped from the output, others in slot order.
    eager_cache.release(1, written[1])
    graph_cache.release(1, written[1])
    hidden, rows = step([0, 2], code=17)
    assert rows == 4 and hidden.shape == (2, gpt.model_dim)

    # The live rows' keys and values are the same as the eager runner wrote.
    for eager_layer, graph_layer in zip(eager_cache.layers, graph_cache.layers, strict=True):
        for s in (0, 2):
            n = written[s]
            torch.testing.assert_close(graph_layer.k[s, :, :n], eager_layer.k[s, :, :n], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(graph_layer.v[s, :, :n], eager_layer.v[s, :, :n], atol=1e-5, rtol=1e-5)


def test_engine_with_graph_replays_decodes_the_same_codes_as_without(gpt, cpu_graph_calls):
    def requests() -> list[DecodeRequest]:
        g = torch.Generator().manual_seed(5)
        # Different lengths: sequences leave the batch at different steps, so the bucket shrinks.
        return [DecodeRequest(
            speaker_latents=torch.randn(32, gpt.model_dim, generator=g),
            emotion_vector=torch.randn(gpt.model_dim, generator=g),
            text_ids=torch.randint(2, 500, (6 + i,), generator=g),
            sampling=SamplingConfig(do_sample=True, top_k=20, temperature=0.9, repetition_penalty=2.0,
                                    max_codes=codes, min_codes=codes, seed=i),
        ) for i, codes in enumerate([12, 5, 9, 3, 7])]

    results = []
    for graphs in (False, True):
        engine = DecoderEngine(gpt, max_slots=6, max_seq_len=80, device="cpu")
        if graphs:  # what ModelRunner does on CUDA, with the graph calls stood in
            with torch.inference_mode():
                engine._runner.cuda_graphs = eager_replays(CudaDecodeGraphs(engine.model, engine._cache))
        handles = [engine.submit(r) for r in requests()]
        engine.run_until_idle()
        results.append([h.result(timeout=0) for h in handles])
        if graphs:
            assert {r.decode_rows for r in engine.stats.records if r.decode_batch} <= {1, 2, 4, 6}
    for plain, graphed in zip(*results, strict=True):
        assert graphed.codes.tolist() == plain.codes.tolist()
        torch.testing.assert_close(graphed.latents, plain.latents, atol=1e-5, rtol=1e-5)


def test_the_checks_graph_measurements_run_on_the_cpu_with_stand_in_graphs(cpu_graph_calls, monkeypatch):
    # What the decoder and s2mel parts do only on a GPU, with every graph replayed eagerly: the graph rows
    # are measured and, replays being exact, the codes and mels equal the eager ones.
    settings = dataclasses.replace(CPU, s2mel_modes=("float32", "float16-autocast"), compare_steps=12)
    check = Check(PRESETS["demo"], torch.device("cpu"), settings, seed=0)
    for name in ("gpt", "s2mel", "codec"):
        check.build(name)
    check.cuda_graphs, check.capture = True, eager_capture
    plain_init = ModelRunner.__init__

    def init_with_graphs(self, model, cache, use_cuda_graphs=True):
        plain_init(self, model, cache, use_cuda_graphs=False)
        if use_cuda_graphs:
            self.cuda_graphs = eager_replays(CudaDecodeGraphs(model, cache))

    monkeypatch.setattr(ModelRunner, "__init__", init_with_graphs)

    decoder = {"skipped": {}}
    decoder_part(check, Budget(120), decoder)
    assert not decoder.get("errors") and "cuda_graphs_vs_eager" not in decoder["skipped"]
    assert [(r["batch"], r["sequences_equal"]) for r in decoder["cuda_graphs_vs_eager"]] == [(1, 1), (4, 4)]
    assert all(r["latent_max_abs_error"] < 1e-4 for r in decoder["cuda_graphs_vs_eager"])
    assert decoder["float16_vs_float32"]["cuda_graphs"] and decoder["engine"][0]["cuda_graphs"]
    assert {r["runner"] for r in decoder["step_time"]} == {"eager", "cuda_graphs"}

    s2mel = {"skipped": {}}
    s2mel_part(check, Budget(120), s2mel)
    assert not s2mel.get("errors") and "cuda_graph" not in s2mel["skipped"]
    graph_rows = [r for r in s2mel["rows"] if r["runner"] == "cuda_graph"]
    assert sorted((r["mode"], r["batch"]) for r in graph_rows) == [
        (mode, batch) for mode in ("float16-autocast", "float32") for batch in (1, 2)]
    assert all(row["vs_eager_same_mode"]["max_abs_error"] < 1e-5 for row in graph_rows)


# ---------------------------------------------------------------------------------------------------
# The s2mel velocity graph wrapper, with eager replays
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s2mel():
    torch.manual_seed(0)
    network = build_s2mel(DEMO_CONFIG["s2mel"], gpt_latent_dim=DEMO_CONFIG["gpt"]["model_dim"])
    randomise_(network, seed=0)
    return network.eval()


def velocity_inputs(batch: int, frames: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    channels = DEMO_CONFIG["s2mel"]["DiT"]["content_dim"]
    return (torch.randn(batch, 80, frames, generator=g), torch.randn(batch, 80, frames, generator=g),
            torch.tensor([frames, frames - 3][:batch]), torch.rand(batch, generator=g),
            torch.randn(batch, 192, generator=g), torch.randn(batch, frames, channels, generator=g))


@torch.inference_mode()
def test_graphed_velocity_copies_each_calls_inputs_into_the_graph_of_its_shape(s2mel):
    velocity = dit_velocity(s2mel)
    graphed = GraphedVelocity(velocity, capture=eager_capture)
    first = graphed(*velocity_inputs(2, 12, seed=1))
    torch.testing.assert_close(first, velocity(*velocity_inputs(2, 12, seed=1)))
    second = graphed(*velocity_inputs(2, 12, seed=2))  # same shapes: the same graph, new inputs
    assert second is first and len(graphed.graphs) == 1
    torch.testing.assert_close(second, velocity(*velocity_inputs(2, 12, seed=2)))
    other = graphed(*velocity_inputs(2, 16, seed=3))  # a new shape: a graph of its own
    assert len(graphed.graphs) == 2
    torch.testing.assert_close(other, velocity(*velocity_inputs(2, 16, seed=3)))
    torch.testing.assert_close(graphed(*velocity_inputs(2, 12, seed=4)), velocity(*velocity_inputs(2, 12, seed=4)))


def test_s2mel_batch_through_the_graphed_velocity_equals_the_plain_batch(s2mel):
    codec = build_semantic_codec(DEMO_CONFIG["semantic_codec"]).eval()
    batcher = S2MelBatcher(s2mel, codec)
    g = torch.Generator().manual_seed(0)
    requests = [S2MelRequest(codes=torch.randint(0, 256, (n,), generator=g),
                             latents=torch.randn(n, DEMO_CONFIG["gpt"]["model_dim"], generator=g),
                             prompt_condition=torch.randn(p, 32, generator=g), ref_mel=torch.randn(80, p, generator=g),
                             style=torch.randn(192, generator=g), diffusion_steps=3, seed=i)
                for i, (n, p) in enumerate([(6, 10), (9, 7)])]  # rows of different lengths: padding and CFG
    graphed = GraphedVelocity(dit_velocity(s2mel), capture=eager_capture)
    for plain, through_graph in zip(batcher.run(requests), batcher.run(requests, velocity_fn=graphed), strict=True):
        torch.testing.assert_close(through_graph, plain)
    assert len(graphed.graphs) == 1  # the conditional and unconditional rows of both requests, one shape


# ---------------------------------------------------------------------------------------------------
# Comparisons, schedules, stand-ins
# ---------------------------------------------------------------------------------------------------


def test_compare_sequences_finds_the_first_divergence_and_compares_latents_only_up_to_it():
    codes = torch.arange(10)
    latents = torch.randn(10, 4)
    same = compare_sequences(codes, latents, codes.clone(), latents.clone())
    assert same["equal"] and same["first_divergence"] is None and same["compared_latents"] == 10
    assert same["latent_max_abs_error"] == 0.0 and same["latent_rel_error"] == 0.0

    other_codes, other_latents = codes.clone(), latents.clone()
    other_codes[3] = 99
    other_latents[2, 0] += 1e-3  # before the divergence: counted
    other_latents[4:] += 100.0  # after it (inputs differ from step 4 on): not counted
    row = compare_sequences(codes, latents, other_codes, other_latents)
    assert not row["equal"] and row["first_divergence"] == 3 and row["compared_latents"] == 4
    assert row["latent_max_abs_error"] == pytest.approx(1e-3, rel=1e-3)

    shorter = compare_sequences(codes, latents, codes[:6], latents[:6])
    assert shorter["first_divergence"] == 6 and shorter["compared_latents"] == 6

    summary = summarize_comparisons([same, row, shorter])
    assert summary["sequences"] == 3 and summary["sequences_equal"] == 1
    assert summary["first_divergence_min"] == 3 and summary["first_divergence_median"] == 4.5


def test_clip_positions_keeps_positions_the_cache_holds():
    assert clip_positions((10, 500, 1500), 406) == [10, 405]
    assert clip_positions((10, 500, 1500), 2451) == [10, 500, 1500]


def test_fifo_schedule_serves_streams_one_after_another_and_extrapolates_the_rest():
    times, extrapolated = fifo_schedule([1.0, 2.0], [0.5, 0.5], [3.0, 3.0], count=4)
    assert extrapolated == 2
    assert [t.first_audio_s for t in times] == [0.5, 1.5, 3.5, 5.0]
    assert [t.done_s for t in times] == [1.0, 3.0, 4.5, 6.0]
    summary = stream_summary(times, extrapolated)
    assert summary["wall_s"] == 6.0 and summary["audio_s_per_s"] == 2.0 and summary["extrapolated_streams"] == 2
    assert summary["rtf_max"] == 2.0 and summary["first_codes_p50_s"] is None
    assert stream_summary([StreamTimes(0.2, 1.0, 2.0, first_codes_s=0.1)])["first_codes_p50_s"] == 0.1


def test_stand_in_module_names_refuse_to_be_used_but_import():
    module = _StandInModule("somepackage", "not needed here")
    placeholder = module.Anything
    with pytest.raises(RuntimeError, match="somepackage.Anything .*not needed here"):
        placeholder(1, x=2)
    try:
        raise ValueError("x")
    except (module.SomeError, ValueError):  # usable in an except clause
        pass
    with pytest.raises(AttributeError):
        module.__path__  # noqa: B018 - not a package
