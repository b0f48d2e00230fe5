"""A spec resolved and checked as a whole: the matrices whose defaults depend on the dimensions, their
shapes and positive semidefiniteness, the constraints between keys, the exact value (teacher) at the
initial gains and the memory and work budget. Above the schema (offtd.spec_schema) and below the I/O
(offtd.spec_io): this is where validation meets the model (offtd.model) and the kernels' budget
(offtd.budget), so the schema itself imports neither."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import budget
from .model import problem_from_spec, teacher, teacher_overflows
from .spec_schema import _MATRIX_KEYS, _PSD_KEYS, SWEEP_TABLE, Matrix, Spec, SpecError, _build, _default_matrix


def _resolve(spec: Spec) -> Spec:
    """Fill default matrices, check shapes, PSD-ness and cross-key constraints."""

    n, m = spec.env.state_dim, spec.env.action_dim
    dims = {"n": n, "m": m}
    env = spec.env
    policy = spec.policy
    resolved: dict[str, Matrix] = {}
    for key, (rs, cs) in _MATRIX_KEYS.items():
        table, name = key.split(".")
        value = getattr(env if table == "env" else policy, name)
        if value is None:
            value = resolved["policy.k_init"] if key == "policy.k_mu_init" else _default_matrix(key, n, m)
        shape = (dims[rs], dims[cs])
        got = (len(value), len(value[0]))
        if got != shape:
            raise SpecError(key, f"expected a {shape[0]} x {shape[1]} matrix ({rs} x {cs}), got {got[0]} x {got[1]}")
        resolved[key] = value
    for key in _PSD_KEYS:
        mat = np.array(resolved[key])
        if not np.allclose(mat, mat.T, rtol=0, atol=1e-12 * max(1.0, float(np.abs(mat).max()))):
            raise SpecError(key, "must be symmetric")
        lo = float(np.linalg.eigvalsh(mat).min())
        if lo < -1e-10 * max(1.0, float(np.abs(mat).max())):
            raise SpecError(key, f"must be positive semidefinite (smallest eigenvalue {lo:.4g})")
    env_changes: dict[str, Any] = {k.split(".")[1]: v for k, v in resolved.items() if k.startswith("env.")}
    policy_changes: dict[str, Any] = {k.split(".")[1]: v for k, v in resolved.items() if k.startswith("policy.")}
    env = dataclasses.replace(env, **env_changes)
    policy = dataclasses.replace(policy, **policy_changes)
    dist = spec.probes.distribution
    if dist.action_samples > dist.num_samples:
        raise SpecError(
            "probes.distribution.action_samples",
            f"must be <= probes.distribution.num_samples ({dist.num_samples}), got {dist.action_samples}",
        )
    if spec.health.khat_warn > spec.health.khat_fail:
        raise SpecError("health.khat_warn", f"must be <= health.khat_fail ({spec.health.khat_fail:g})")
    if spec.health.clip_mass_warn > spec.health.clip_mass_fail:
        raise SpecError("health.clip_mass_warn", f"must be <= health.clip_mass_fail ({spec.health.clip_mass_fail:g})")
    out = dataclasses.replace(spec, env=env, policy=policy)
    _check_memory(out)
    _check_initial_teacher(out)
    return out


# The matrices the teacher is computed from (MODEL.md 3.7), in the order a refusal names them on a tie.
_TEACHER_INPUTS = ("env.a", "env.b", "policy.k_init", "env.q", "env.r")
# Largest |z| of the backend's Box-Muller normals: sqrt(-2 log 2^-53) = 8.57 (MODEL.md 1).
_MAX_NORMAL = 9.0


def _check_initial_teacher(spec: Spec) -> None:
    """The exact value (teacher) at the initial gains must be a finite double wherever it exists: the
    critic may start from it and every iteration measures the critic against it. Refuses specs whose
    teacher exists (sqrt(gamma) rho(A + B K_init) < 1) but overflows double precision, and teacher_noise
    starts whose noise overflows. Costs one Lyapunov solve (n^2 unknowns)."""
    problem = problem_from_spec(spec)
    k_init = np.array(spec.policy.k_init, dtype=float)
    tch = teacher(problem, k_init)
    if teacher_overflows(problem, tch):
        if teacher(dataclasses.replace(problem, reward_scale=1.0), k_init).defined:
            raise SpecError(
                "env.reward_scale",
                f"the exact value (teacher) at the initial gains overflows double precision at reward_scale = "
                f"{spec.env.reward_scale:g}; use a smaller scale",
            )

        def largest(key: str) -> float:
            table, name = key.split(".")
            return max(abs(x) for row in getattr(getattr(spec, table), name) for x in row)

        key = max(_TEACHER_INPUTS, key=largest)
        raise SpecError(
            key,
            f"the exact value (teacher) at the initial gains is not representable in double precision (the "
            f"Lyapunov solve overflows; largest entry {largest(key):g}); use smaller entries",
        )
    if spec.critic.init != "teacher_noise" or not tch.defined:
        return
    with np.errstate(all="ignore"):
        norm = float(np.linalg.norm(tch.w))  # as the loop computes it (MODEL.md 3, critic initialisation)
        scale = spec.critic.init_noise * norm / math.sqrt(problem.d)
        worst = float(np.max(np.abs(tch.w))) + _MAX_NORMAL * scale
    if not math.isfinite(norm):
        raise SpecError(
            "critic.init",
            f"teacher_noise needs ||w_teacher||, which overflows double precision (reward_scale = "
            f"{spec.env.reward_scale:g}); use init = \"teacher\" or a smaller env.reward_scale",
        )
    if not math.isfinite(worst):
        raise SpecError(
            "critic.init_noise",
            f"the initial noise (init_noise x ||w_teacher|| / sqrt(d) = {scale:g}) overflows double precision",
        )


def memory_terms(spec: Spec) -> dict[str, int]:
    """Peak bytes a run holds, by the key that sets each part (offtd.budget, next to the kernels)."""
    return budget.memory_terms(spec)


def memory_estimate_bytes(spec: Spec) -> int:
    """Peak bytes of the arrays a run holds at once (offtd.budget)."""
    return budget.memory_estimate_bytes(spec)


def _check_memory(spec: Spec) -> None:
    """The memory and work budgets (offtd.budget): a SpecError naming the dominant key and the estimate."""
    budget.check_memory(spec)
    budget.check_work(spec)


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """Validate a nested dict (as read from TOML) into a resolved :class:`Spec` (a `[sweep]` table is
    skipped: offtd.sweep reads it)."""
    if isinstance(data, Mapping) and SWEEP_TABLE in data:
        data = {k: v for k, v in data.items() if k != SWEEP_TABLE}
    return _resolve(_build(Spec, data, ""))
