"""Linear solvers of specs/MODEL.md section 6, pure Python: restarted GMRES and a checking LU solve.

GMRES(restart = d), ``x_0 = 0``:

* ``||b|| = 0``: ``x = 0``, converged, 0 iterations, residual 0.
* Each cycle starts from the true residual ``r = b - A x`` (``beta_r = ||r||``, ``v_0 = r / beta_r``,
  ``g = [beta_r, 0, ..]``) and runs at most ``d`` inner iterations: ``w = A v_k``; modified Gram-Schmidt
  ``h_ik = w . v_i``, ``w = w - h_ik v_i`` for ``i = 0..k``; ``h_{k+1,k} = ||w||``; the previous Givens
  rotations are applied to column k, a new rotation zeroes ``h_{k+1,k}`` and updates ``g``.
  The updated relative residual is ``|g_{k+1}| / ||b||``.
* The cycle ends when that residual is ``<= tol``, on a breakdown (``h_{k+1,k} == 0``: the Krylov
  solution is then exact), after ``d`` inner iterations, or when the ``max_iters`` budget is spent;
  ``x += V y`` with ``H y = g`` solved by back substitution.
* A new cycle starts unless the residual test passed or the budget is spent. Before its first inner
  iteration, a cycle whose starting residual ``beta_r / ||b||`` is already ``<= tol`` stops
  (no iteration is spent on it).
* ``residual`` is the true ``||b - A x|| / ||b||`` at exit; ``converged = residual <= tol``.

Literal-order choices (MODEL.md does not fix them): a norm is ``sqrt(sum v_i*v_i)`` left to right;
``(A v)_i`` and dot products are left-to-right sums from 0.0; Givens rotation
``den = sqrt(h_kk*h_kk + h_k1k*h_k1k)``, ``c = h_kk/den``, ``s = h_k1k/den``,
``h_kk = c*h_kk + s*h_k1k``, ``g_{k+1} = -s*g_k``, ``g_k = c*g_k``; previous rotations
``t = c_i*h_ik + s_i*h_{i+1,k}``, ``h_{i+1,k} = -s_i*h_ik + c_i*h_{i+1,k}``, ``h_ik = t``;
back substitution ``y_i = (g_i - sum_{j>i} h_ij*y_j) / h_ii`` (the sum left to right from 0.0);
``x_i = x_i + sum_j V[j][i]*y_j`` (the sum left to right from 0.0).
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import dot, ieee_div, ieee_sqrt, matvec, norm2


@dataclass
class SolvePy:
    x: list
    converged: bool
    iterations: int
    residual: float


def _residual(a, b, x) -> list[float]:
    ax = matvec(a, x)
    return [bi - axi for bi, axi in zip(b, ax)]


def gmres(a, b, max_iters: int, tol: float) -> SolvePy:
    """Restarted GMRES(restart = d) for ``A x = b`` (``a`` a list of rows, ``b`` a list)."""
    d = len(b)
    x = [0.0] * d
    bnorm = norm2(b)
    if bnorm == 0.0:
        return SolvePy(x=x, converged=True, iterations=0, residual=0.0)

    iters = 0
    done = False
    while not done and iters < max_iters:
        r = _residual(a, b, x)
        beta = norm2(r)
        if not (ieee_div(beta, bnorm) > tol):  # already there (or NaN): no iteration spent
            break
        vs = [[ieee_div(ri, beta) for ri in r]]
        g = [0.0] * (d + 1)
        g[0] = beta
        h = [[0.0] * d for _ in range(d + 1)]  # h[i][k], (d+1) x d Hessenberg
        cs: list[float] = []
        sn: list[float] = []
        k_used = 0
        for k in range(d):
            if iters >= max_iters:
                break
            w = matvec(a, vs[k])
            for i in range(k + 1):
                vi = vs[i]
                hik = dot(w, vi)
                h[i][k] = hik
                w = [wl - hik * vl for wl, vl in zip(w, vi)]
            hk1 = norm2(w)
            h[k + 1][k] = hk1
            breakdown = hk1 == 0.0
            for i in range(k):
                t = cs[i] * h[i][k] + sn[i] * h[i + 1][k]
                h[i + 1][k] = -sn[i] * h[i][k] + cs[i] * h[i + 1][k]
                h[i][k] = t
            hkk = h[k][k]
            hkk1 = h[k + 1][k]
            den = ieee_sqrt(hkk * hkk + hkk1 * hkk1)
            c = ieee_div(hkk, den)
            s = ieee_div(hkk1, den)
            cs.append(c)
            sn.append(s)
            h[k][k] = c * hkk + s * hkk1
            h[k + 1][k] = 0.0
            g[k + 1] = -s * g[k]
            g[k] = c * g[k]
            iters += 1
            k_used = k + 1
            if abs(g[k + 1]) / bnorm <= tol:
                done = True
                break
            if breakdown:
                break
            vs.append([ieee_div(wl, hk1) for wl in w])
        if k_used == 0:
            break
        # Back substitution on the k_used x k_used upper-triangular system.
        y = [0.0] * k_used
        for i in range(k_used - 1, -1, -1):
            acc = 0.0
            for j in range(i + 1, k_used):
                acc += h[i][j] * y[j]
            y[i] = ieee_div(g[i] - acc, h[i][i])
        for i in range(d):
            acc = 0.0
            for j in range(k_used):
                acc += vs[j][i] * y[j]
            x[i] = x[i] + acc

    residual = ieee_div(norm2(_residual(a, b, x)), bnorm)
    return SolvePy(x=x, converged=residual <= tol, iterations=iters, residual=residual)


def lu_solve(a, b) -> list[float]:
    """Direct solve of ``A x = b`` by LU with partial pivoting (for checking GMRES).

    Pivot = the first row with the largest ``|a_ik|`` at or below the diagonal. Singular matrices
    produce inf/NaN (IEEE division), never an exception.
    """
    n = len(b)
    lu = [[float(v) for v in row] for row in a]
    rhs = [float(v) for v in b]
    for k in range(n):
        p = k
        best = abs(lu[k][k])
        for i in range(k + 1, n):
            if abs(lu[i][k]) > best:
                best = abs(lu[i][k])
                p = i
        if p != k:
            lu[k], lu[p] = lu[p], lu[k]
            rhs[k], rhs[p] = rhs[p], rhs[k]
        piv = lu[k][k]
        for i in range(k + 1, n):
            f = ieee_div(lu[i][k], piv)
            lu[i][k] = f
            row_i = lu[i]
            row_k = lu[k]
            for j in range(k + 1, n):
                row_i[j] = row_i[j] - f * row_k[j]
            rhs[i] = rhs[i] - f * rhs[k]
    x = [0.0] * n
    for i in range(n - 1, -1, -1):
        acc = 0.0
        for j in range(i + 1, n):
            acc += lu[i][j] * x[j]
        x[i] = ieee_div(rhs[i] - acc, lu[i][i])
    return x
