"""A/B experiments on the real server (`alignd serve`, SmolLM2): a whole experiment with feedback
and its report, a SIGKILL while requests are being recorded, and a bad arm in the config."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alignd.clients import AligndClient
from tests.integration.conftest import SAMPLE_VS_BON, answered_until_sigkill, expected_arm, start_serve, stop

pytestmark = pytest.mark.integration

CONFIG = """
experiment_store = "{store}"
[default_sampling]
max_tokens = 12
temperature = 0.7
""" + SAMPLE_VS_BON.replace("{", "{{").replace("}", "}}")


def _config(tmp_path: Path, store: Path) -> Path:
    path = tmp_path / "alignd.toml"
    path.write_text(CONFIG.format(store=store))
    return path


def test_an_experiment_end_to_end_feedback_and_report(tmp_path):
    store = tmp_path / "experiments.sqlite"
    server = start_serve(tmp_path, "--config", str(_config(tmp_path, store)))
    try:
        with AligndClient(server.target, timeout=120) as client:
            subjects = [f"user-{i}" for i in range(24)]
            with ThreadPoolExecutor(3) as pool:
                served = list(
                    pool.map(
                        lambda s: client.generate(
                            "Suggest a name for a cat.", strategy="", experiment="sample-vs-bon", subject=s
                        ),
                        subjects,
                    )
                )
            assert [g.arm for g in served] == [expected_arm(s) for s in subjects]
            assert {g.strategy for g in served if g.arm == "bon4"} <= {"best_of_n"}
            sent = {"thumbs": {"sample": [0, 0], "bon4": [0, 0]}, "ratings": {"sample": 0, "bon4": 0}}
            for i, g in enumerate(served):
                up = i % 3 != 0
                client.feedback(g.request_id, thumbs_up=up)
                sent["thumbs"][g.arm][0] += int(up)
                sent["thumbs"][g.arm][1] += 1
                if i % 2 == 0:
                    client.feedback(g.request_id, rating=float(i % 5))
                    sent["ratings"][g.arm] += 1
            # Sent again (a client retry): it replaces the first, so the counts above stay right.
            assert client.feedback(served[0].request_id, thumbs_up=False) is True
            by_arm = {arm: [g for g in served if g.arm == arm] for arm in ("sample", "bon4")}
            pairs = list(zip(by_arm["bon4"], by_arm["sample"]))[:6]
            for winner, loser in pairs:
                client.feedback(winner.request_id, preferred_over=loser.request_id)

            report = client.report("sample-vs-bon")
            assert report.requests == len(subjects)
            for arm in report.arms:
                mine = by_arm[arm.name]
                assert arm.requests == len(mine) and arm.subjects == len(mine)
                assert (arm.thumbs_up.successes, arm.thumbs_up.trials) == tuple(sent["thumbs"][arm.name])
                assert arm.rating.count == sent["ratings"][arm.name]
                assert arm.preference_wins.trials == len(pairs)
            assert report.arm("bon4").preference_wins.successes == len(pairs)
            with sqlite3.connect(store) as connection:
                rows = connection.execute("SELECT arm, rewards, weighted_score, request_id FROM requests").fetchall()
            assert {r[3] for r in rows} == {g.request_id for g in served}
            for arm in report.arms:
                mine = [r for r in rows if r[0] == arm.name]
                assert arm.weighted_score.mean == pytest.approx(sum(r[2] for r in mine) / len(mine))
                for objective, estimate in arm.rewards.items():
                    recomputed = sum(json.loads(r[1])[objective] for r in mine) / len(mine)
                    assert estimate.mean == pytest.approx(recomputed)
            metrics = {c.metric for c in report.comparisons}
            assert {"weighted_score", "thumbs_up", "rating", "preference"} <= metrics

        out = tmp_path / "report.png"
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "alignd.cli",
                "experiments",
                "report",
                "sample-vs-bon",
                "--target",
                server.target,
                "--plot",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        assert "bon4" in cli.stdout and "welch_t" in cli.stdout
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stop(server)


def test_sigkill_while_recording_loses_no_answered_request(tmp_path):
    store = tmp_path / "experiments.sqlite"
    config = _config(tmp_path, store)
    server = start_serve(tmp_path, "--config", str(config))
    answered = answered_until_sigkill(server)
    assert len(answered) >= 16

    # The store opens as it is: no repair, no lost acknowledged row.
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    restarted = start_serve(tmp_path, "--config", str(config))
    try:
        with AligndClient(restarted.target, timeout=60) as client:
            for request_id in answered:
                client.feedback(request_id, thumbs_up=True)  # NOT_FOUND if it had been lost
            assert client.report("sample-vs-bon").requests >= len(answered)
    finally:
        stop(restarted)


def test_a_bad_arm_in_the_config_stops_serve_with_one_line_naming_it(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.format(store=tmp_path / "s.sqlite").replace("params = { n = 4 }", "params = { n = 0 }"))
    result = subprocess.run(
        [sys.executable, "-m", "alignd.cli", "serve", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("alignd: error: experiments[0]") and "'bon4'" in last and "best_of_n.n" in last
