"""Exact theory of the model (specs/MODEL.md section 9): the expected TD update in closed form
(operator.py, gram.py, expected_td.py), the ratio moments (ratios.py), uncertainty for what stays
estimated (uncertainty.py), the exact metrics of a probe iteration (exact_metrics.py), `offtd theory`
over grids (grid.py) and the report's Theory section (section.py). Nothing here draws a random number.
Submodules are imported by name: the section depends on the loop, which depends on the rest."""
