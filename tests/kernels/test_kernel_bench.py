"""benchmarks/kernel_bench.py on CPU (eager provider only, tiny sizes): table, CSV upsert, PNG."""

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

# the script, loaded by its path (benchmarks/ is not a package)
_spec = importlib.util.spec_from_file_location("kernel_bench", Path(__file__).parents[2] / "benchmarks" / "kernel_bench.py")
bench = sys.modules["kernel_bench"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.slow
def test_cpu_smoke_run_upserts_csv_and_draws(tmp_path, capsys):
    out = tmp_path / "kernels.csv"
    args = ["--device", "cpu", "--providers", "eager", "--rows", "6,7", "--sizes", "3", "--csv", str(out)]
    bench.main(args)
    bench.main(args)  # the same keys again: replaced, not appended
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3  # families x row counts x modes
    assert {r["mode"] for r in rows} == {"forward", "backward", "full"}
    assert list(rows[0]) == list(bench.CSV_FIELDS)
    timed = {(r["family"], r["rows"], r["mode"]): [float(r[k]) for k in ("p20_ms", "p50_ms", "p80_ms")] for r in rows}
    for r in rows:
        p20, p50, p80 = timed[r["family"], r["rows"], r["mode"]]
        if r["mode"] == "backward":  # derived: full - forward, quantile by quantile, floored at 0
            full, forward = timed[r["family"], r["rows"], "full"], timed[r["family"], r["rows"], "forward"]
            assert [p20, p50, p80] == pytest.approx([max(f - w, 0.0) for f, w in zip(full, forward)], abs=2e-5)
            continue
        assert 0 < p20 <= p50 <= p80
        assert int(r["min_bytes"]) == bench.min_bytes(r["family"], int(r["rows"]), int(r["size"]), r["mode"])
        # effective bandwidth = minimum bytes / p50, and its share of the measured copy bandwidth
        gbps = int(r["min_bytes"]) / (p50 * 1e-3) / 1e9
        assert float(r["effective_gbps"]) == pytest.approx(gbps, rel=1e-3, abs=0.01)
        assert float(r["fraction_of_copy"]) == pytest.approx(gbps / float(r["copy_gbps"]), rel=1e-2, abs=1e-4)
        assert r["torch"] and r["triton"] and r["date"]
    assert len(list(tmp_path.glob("kernels_*.png"))) == 1
    assert "copy bandwidth" in capsys.readouterr().out


def test_min_bytes_counts_reads_and_gradient_writes():
    forward = bench.min_bytes("categorical", 1024, 16, "forward")
    backward = bench.min_bytes("categorical", 1024, 16, "backward")
    assert backward == 1024 * 2 * 16 * 4  # both sides' fp32 gradients, written once
    assert forward == backward + 1024 * (8 + 8)  # + action (int64), behaviour log-prob, advantage
    assert bench.min_bytes("categorical", 1024, 16, "full") == forward + backward


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cpu", "--providers", "eager,triton"], "cannot time the Triton provider"),
        (["--device", "cpu", "--providers", "numpy"], "--providers"),
        (["--device", "cpu", "--providers", "eager", "--rows", "0"], "--rows"),
        (["--device", "cpu", "--providers", "eager", "--sizes", "x"], "comma lists"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err
