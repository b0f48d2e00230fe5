"""Health checks on whole runs built to hit one finding each (specs/MODEL.md 7): scale-free bounds,
0/0, a clip that removes every ratio, advice that never recommends what is already on, light tails,
and non-finite numbers printed as such everywhere."""

from __future__ import annotations

import json
import math

import offtd

SMALL = {"run.outer_iters": 6, "run.horizon": 40, "run.probe_every": 3}


def _checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in result.checks}


def test_finite_bounds_do_not_depend_on_the_reward_scale():
    # The critic frozen at the exact teacher and the policy fixed: nothing diverges, whatever c_r is (the
    # old absolute bounds FAILed at reward_scale = 1e7 because ||w|| and td_loss scale with c_r and
    # c_r^2). A moving actor is not scale-free (its step scales with c_r), so it stays fixed here.
    frozen = {"critic.init": "teacher", "critic.alpha_w": 0.0, "actor.alpha_pi": 0.0}
    for scale in (1e-7, 1.0, 1e7):
        r = offtd.run(None, **SMALL, **{"env.reward_scale": scale, **frozen})
        assert _checks(r)["finite"]["status"] == "PASS", (scale, _checks(r)["finite"])
    # and a diverging critic still FAILs, at any scale
    for scale in (1e-7, 1e7):
        r = offtd.run("specs/diverging_critic.toml", **{"env.reward_scale": scale})
        assert _checks(r)["finite"]["status"] == "FAIL", scale


def test_zero_costs_are_not_divergence():
    # Q = R = 0: every reward is 0, the teacher is 0 and critic_teacher_error is 0/0 at iteration 0.
    r = offtd.run(None, **SMALL, **{"env.q": [[0.0, 0.0], [0.0, 0.0]], "env.r": [[0.0, 0.0], [0.0, 0.0]]})
    assert r.report["run_info"]["diverged_at"] is None
    assert _checks(r)["finite"]["status"] == "PASS"
    assert r.series["critic_teacher_error"][0] == 0.0  # w = 0 = w_teacher: exact, not NaN


def test_a_clip_that_removes_every_ratio_is_not_pass():
    r = offtd.run(None, **SMALL, **{"rho.clip_enabled": True, "rho.clip": 1e-9})
    rho = _checks(r)["rho_sane"]
    assert rho["status"] == "FAIL" and rho["kind"] == "clip_mass", rho
    assert any("raise rho.clip" in s for s in r.report["next_steps"])


def test_advice_never_recommends_a_clip_that_is_on():
    # clip = 3 on the example's policies: the check judges the clipped weights, and no advice says to
    # enable clipping.
    r = offtd.run("specs/instab_sigma_mismatch.toml", **{"rho.clip_enabled": True, "rho.clip": 3.0, "run.outer_iters": 20})
    rho = _checks(r)["rho_sane"]
    assert "rho_bar" in rho["reason"] or rho["kind"] in ("clip_mass", "clip_bias"), rho
    assert not any("enable rho.clip" in s for s in r.report["next_steps"]), r.report["next_steps"]
    # without the clip the advice may suggest one, with a value the exact theory checked
    off = offtd.run("specs/instab_sigma_mismatch.toml", **{"actor.alpha_pi": 0.0, "run.outer_iters": 20})
    assert any("enable rho.clip with rho.clip =" in s for s in off.report["next_steps"]), off.report["next_steps"]


def test_light_tail_of_pi_over_b_is_not_judged_by_pi_over_mu():
    # sigma_mu = .05, sigma_pi = 1, p_mix = .3: pi/b <= 1/0.3, while pi/mu has a very heavy tail. The
    # verdict must judge pi/b (the weights the updates use); the distribution probe's pi/mu k_hat never
    # stands in.
    r = offtd.run(None, **SMALL, **{"policy.sigma_mu": 0.05, "policy.sigma_pi": 1.0, "policy.p_mix": 0.3})
    rho = _checks(r)["rho_sane"]
    assert r.probe_series["distribution_probe"]["rho_khat"][-1] > 0.7  # the pi/mu tail is heavy
    assert rho["kind"] != "rho_tail", rho
    assert "distribution_probe" not in rho["reason"]


def test_infinite_predictions_print_as_inf_everywhere(tmp_path):
    # E_mu[(pi/mu)^2] is infinite for the example's policies (sigma_pi^2 >= 2 sigma_mu^2).
    r = offtd.run("specs/instab_sigma_mismatch.toml", out=tmp_path, **{"run.outer_iters": 5})
    assert math.isinf(r.report["theory"]["E_mu[rho^2]"]["predicted"])
    row = next(line for line in r.markdown().splitlines() if line.startswith("| E_mu[rho^2] |"))
    assert row.split("|")[2].strip() == "inf"
    md = (r.run_dir / "report.md").read_text()
    assert "| E_mu[rho^2] | inf |" in md
    raw = json.loads((r.run_dir / "report.json").read_text())
    assert raw["theory"]["E_mu[rho^2]"]["predicted"] == "inf"
    loaded = offtd.load_run(r.run_dir)
    assert math.isinf(loaded.report["theory"]["E_mu[rho^2]"]["predicted"])
    assert "| E_mu[rho^2] | inf |" in loaded.markdown()


def test_theory_command(offtd_cmd, tmp_path):
    out = tmp_path / "t.csv"
    proc = offtd_cmd("theory", "specs/instab_sigma_mismatch.toml", "--grid", "policy.p_mix=0.01,0.05", "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| cell | policy.p_mix | exact_radius |") and len(lines) == 4
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [float(r["policy.p_mix"]) for r in rows] == [0.01, 0.05]
    assert float(rows[1]["exact_e_rho2"]) == offtd.theory("specs/instab_sigma_mismatch.toml", {"policy.p_mix": [0.05]})[0]["exact_e_rho2"]
    bad = offtd_cmd("theory", "--grid", "policy.p_mixx=0.1")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "policy.p_mixx" in bad.stderr
