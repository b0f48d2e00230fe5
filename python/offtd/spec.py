"""Experiment specs under one name: the schema, defaults and key validation (offtd.spec_schema), the
whole-spec checks (offtd.spec_resolve: shapes, the initial teacher, the memory and work budget) and the
I/O, TOML loading, `--set` overrides and writing back (offtd.spec_io). Every name offtd.spec had before
the split is importable from here.

A spec is a TOML file with the tables of :class:`Spec`; every key has a default, so `name = "x"` alone
is a valid spec. Validation happens before any work starts and raises :class:`SpecError` naming the key.
"""

from __future__ import annotations

from .spec_io import (
    MAX_SPEC_BYTES as MAX_SPEC_BYTES,
)
from .spec_io import (
    _deep_copy as _deep_copy,
)
from .spec_io import (
    _drop_none as _drop_none,
)
from .spec_io import (
    _format_toml_error as _format_toml_error,
)
from .spec_io import (
    _set_dotted as _set_dotted,
)
from .spec_io import (
    _toml_value as _toml_value,
)
from .spec_io import (
    apply_overrides as apply_overrides,
)
from .spec_io import (
    default_spec_text as default_spec_text,
)
from .spec_io import (
    load_spec as load_spec,
)
from .spec_io import (
    parse_override as parse_override,
)
from .spec_io import (
    read_toml as read_toml,
)
from .spec_io import (
    to_toml as to_toml,
)
from .spec_resolve import (
    _MAX_NORMAL as _MAX_NORMAL,
)
from .spec_resolve import (
    _TEACHER_INPUTS as _TEACHER_INPUTS,
)
from .spec_resolve import (
    _check_initial_teacher as _check_initial_teacher,
)
from .spec_resolve import (
    _check_memory as _check_memory,
)
from .spec_resolve import (
    _resolve as _resolve,
)
from .spec_resolve import (
    memory_estimate_bytes as memory_estimate_bytes,
)
from .spec_resolve import (
    memory_terms as memory_terms,
)
from .spec_resolve import (
    spec_from_dict as spec_from_dict,
)
from .spec_schema import (
    _MATRIX_KEYS as _MATRIX_KEYS,
)
from .spec_schema import (
    _PSD_KEYS as _PSD_KEYS,
)
from .spec_schema import (
    _REPR as _REPR,
)
from .spec_schema import (
    _SUBTABLES as _SUBTABLES,
)
from .spec_schema import (
    INT_MAX as INT_MAX,
)
from .spec_schema import (
    REMOVED_KEYS as REMOVED_KEYS,
)
from .spec_schema import (
    SWEEP_TABLE as SWEEP_TABLE,
)
from .spec_schema import (
    ActorCfg as ActorCfg,
)
from .spec_schema import (
    CriticCfg as CriticCfg,
)
from .spec_schema import (
    DistributionProbeCfg as DistributionProbeCfg,
)
from .spec_schema import (
    EnvCfg as EnvCfg,
)
from .spec_schema import (
    FixedPointProbeCfg as FixedPointProbeCfg,
)
from .spec_schema import (
    HealthCfg as HealthCfg,
)
from .spec_schema import (
    Matrix as Matrix,
)
from .spec_schema import (
    PolicyCfg as PolicyCfg,
)
from .spec_schema import (
    ProbesCfg as ProbesCfg,
)
from .spec_schema import (
    QKernelProbeCfg as QKernelProbeCfg,
)
from .spec_schema import (
    RhoCfg as RhoCfg,
)
from .spec_schema import (
    RunCfg as RunCfg,
)
from .spec_schema import (
    Spec as Spec,
)
from .spec_schema import (
    SpecError as SpecError,
)
from .spec_schema import (
    StabilityProbeCfg as StabilityProbeCfg,
)
from .spec_schema import (
    _build as _build,
)
from .spec_schema import (
    _check_matrix as _check_matrix,
)
from .spec_schema import (
    _check_scalar as _check_scalar,
)
from .spec_schema import (
    _default_matrix as _default_matrix,
)
from .spec_schema import (
    _f as _f,
)
from .spec_schema import (
    _float_or_none as _float_or_none,
)
from .spec_schema import (
    _is_bool as _is_bool,
)
from .spec_schema import (
    _is_ndarray as _is_ndarray,
)
from .spec_schema import (
    _is_real as _is_real,
)
from .spec_schema import (
    _num as _num,
)
from .spec_schema import (
    _printable as _printable,
)
from .spec_schema import (
    _short as _short,
)
from .spec_schema import (
    _suggest as _suggest,
)
from .spec_schema import (
    _to_plain as _to_plain,
)
from .spec_schema import (
    sub_batches as sub_batches,
)


def key_hparams(spec: Spec) -> str:
    """The Run Info line (moved to offtd.report, which renders it)."""
    from .report import key_hparams as run_info_line

    return run_info_line(spec)
