"""Independent numpy references: penalty values and the trigonometric closed forms.

These are transcriptions of the closed forms in the papers and `docs/penalties.md` (not of the library's Newton/polynomial
forms), used to check the library in float64.
"""

import numpy as np


def penalty_values(name, z, **p):
  """Elementwise f(z) for the separable penalties (numpy, float64)."""
  az = np.abs(z)
  if name == "l1":
    return az
  if name == "l0":
    return (z != 0).astype(float)
  if name == "elastic_net":
    return az + 0.5 * p["l2"] * z * z
  if name == "tl1":
    a = p["a"]
    return (a + 1) * az / (a + az)
  if name == "log_sum":
    return np.log1p(az / p["eps"])
  if name == "l_half":
    return np.sqrt(az)
  if name == "l_two_thirds":
    return az ** (2.0 / 3.0)
  if name == "scad":
    lam, a = p["lam"], p["a"]
    return np.where(az <= lam, lam * az,
                    np.where(az <= a * lam, (2 * a * lam * az - az**2 - lam**2) / (2 * (a - 1)),
                             lam**2 * (a + 1) / 2))
  if name == "mcp":
    lam, g = p["lam"], p["gamma"]
    return np.where(az <= g * lam, lam * az - az**2 / (2 * g), g * lam**2 / 2)
  if name == "capped_l1":
    return p["lam"] * np.minimum(az, p["theta"])
  raise KeyError(name)


def brute_force_min(name, v, tau, grid_points=200_001, **p):
  """Global min over z of 1/2 (z - v)^2 + tau f(z), per entry of v (grid + local refinement).

  Returns (min objective, argmin). Candidates 0 and v are always included.
  """
  v = np.asarray(v, float)
  best_h = np.full(v.shape, np.inf)
  best_z = np.zeros(v.shape)
  for i, vi in enumerate(v):
    span = abs(vi) + 2.0
    z = np.linspace(-span, span, grid_points)
    z = np.concatenate([z, [0.0, vi]])
    h = 0.5 * (z - vi) ** 2 + tau * penalty_values(name, z, **p)
    j = int(np.argmin(h))
    step = 2 * span / (grid_points - 1)
    zf = np.linspace(z[j] - 2 * step, z[j] + 2 * step, 4001)
    hf = 0.5 * (zf - vi) ** 2 + tau * penalty_values(name, zf, **p)
    k = int(np.argmin(hf))
    if hf[k] < h[j]:
      best_h[i], best_z[i] = hf[k], zf[k]
    else:
      best_h[i], best_z[i] = h[j], z[j]
  return best_h, best_z


def objective(name, z, v, tau, **p):
  z = np.asarray(z, float)
  return 0.5 * (z - v) ** 2 + tau * penalty_values(name, z, **p)


# ---- the papers' closed forms (trigonometric), float64


def tl1_trig(v, lam, a):
  av = np.abs(v)
  t = lam * (a + 1) / a if lam <= a * a / (2 * (a + 1)) else np.sqrt(2 * lam * (a + 1)) - a / 2
  avs = np.where(av > t, av, t + 1.0)
  phi = np.arccos(np.clip(1 - 27 * lam * a * (a + 1) / (2 * (a + avs) ** 3), -1, 1))
  g = (2 / 3) * (a + avs) * np.cos(phi / 3) - 2 * a / 3 + avs / 3
  return np.where(av > t, np.sign(v) * g, 0.0)


def half_trig(v, tau):
  av = np.abs(v)
  thr = 1.5 * tau ** (2 / 3)
  avs = np.where(av > thr, av, 2 * thr + 1)
  phi = np.arccos(np.clip((tau / 4) * (avs / 3) ** -1.5, -1, 1))
  x = (2 / 3) * avs * (1 + np.cos(2 * np.pi / 3 - (2 / 3) * phi))
  return np.where(av > thr, np.sign(v) * x, 0.0)


def two_thirds_closed(v, tau):
  av = np.abs(v)
  lam = 2 * tau
  thr = (2 / 3) * (3 * lam**3) ** 0.25
  avs = np.where(av > thr, av, 2 * thr + 1)
  psi = np.arccosh((27 / 16) * avs**2 * lam**-1.5)
  phi = (2 / np.sqrt(3)) * lam**0.25 * np.sqrt(np.cosh(psi / 3))
  x = ((phi + np.sqrt(2 * avs / phi - phi**2)) / 2) ** 3
  return np.where(av > thr, np.sign(v) * x, 0.0)


def log_sum_candidates(v, tau, eps):
  av = np.abs(v)
  d = (av + eps) ** 2 - 4 * tau
  r = np.maximum((av - eps + np.sqrt(np.maximum(d, 0))) / 2, 0)
  better = 0.5 * (r - av) ** 2 + tau * np.log1p(r / eps) < 0.5 * av**2
  return np.where((d >= 0) & (r > 0) & better, np.sign(v) * r, 0.0)


def exclusive_active_set(v, tau):
  """Exact prox of tau/2 ||.||_1^2 by the active-set loop (one group)."""
  a = np.abs(v)
  order = np.argsort(-a)
  active = len(v)
  while True:
    idx = order[:active]
    alpha = tau * a[idx].sum() / (1 + tau * active)
    if active == 1 or a[order[active - 1]] > alpha:
      break
    active -= 1
  return np.sign(v) * np.maximum(a - alpha, 0)
