"""Geodesic areas and perimeters of polygons on the WGS84 ellipsoid: what :class:`pyproj.Geod`
(GeographicLib) reports, in compiled code, for the flat arrays of :mod:`kernels.geometry`.

The method is Karney's ("Algorithms for geodesics", J. Geodesy 87, 2013): each edge is a geodesic, found by
solving the inverse problem on the auxiliary sphere (reduced latitudes β, arc length σ from the node, azimuth α0 at
the node), Newton's method on the azimuth at its first end until the longitude it reaches is the edge's. Where
GeographicLib evaluates the integrals of the method by their series in the third flattening, these kernels
evaluate them by Gauss-Legendre quadrature over the edge's arc (their integrands are smooth, varying with
k² sin² σ, k² <= e'² ~ 0.0067, so a few nodes reach rounding):

- longitude: λ12 = ω12 - f sin α0 ∫ (2 - f) / (1 + (1 - f) √(1 + k² sin² σ)) dσ;
- length: s12 = b ∫ √(1 + k² sin² σ) dσ;
- the area between the edge and the equator: S12 = c² (α2 - α1) + e² a² cos α0 sin α0 (I4(σ2) - I4(σ1)), with
  c² the authalic radius squared and I4(σ2) - I4(σ1) = -∫ (t(e'²) - t(k² sin² σ)) / (e'² - k² sin² σ) sin σ / 2 dσ,
  t(x) = x + √(1/x + 1) asinh √x (its divided difference by its power series, free of cancellation).

A ring's signed area is the sum of its edges' S12 (its longitudes are not wrapped: a ring of an area spans at
most 180°). An edge the kernel cannot settle with certainty (a pole on it, nearly antipodal ends, no
convergence) makes its polygon's figures NaN: the caller measures that polygon with pyproj.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: WGS84, as pyproj's ``Geod(ellps="WGS84")``.
A = 6378137.0
F = 1.0 / 298.257223563
_B = A * (1.0 - F)
_E2 = F * (2.0 - F)
_EP2 = _E2 / (1.0 - _E2)
_C2 = (A * A + _B * _B * math.atanh(math.sqrt(_E2)) / math.sqrt(_E2)) / 2.0
#: The ellipsoid's whole surface (4π c²): a ring enclosing more than a quarter of it is left to pyproj.
SURFACE = 4.0 * math.pi * _C2


def _t_series(terms: int) -> np.ndarray:
    """Coefficients of t(x) = x + √(1/x + 1) asinh √x as a power series in x (t(0) = 1): the product of
    √(1 + x) = Σ binom(1/2, m) x^m and asinh(√x)/√x = Σ (-1)^m (2m)! / (4^m m!² (2m + 1)) x^m, plus x."""
    root = np.array([math.comb(2 * m, m) * (-1) ** (m + 1) / (4.0**m * (2 * m - 1)) for m in range(terms)])
    asinh = np.array([(-1) ** m * math.comb(2 * m, m) / (4.0**m * (2 * m + 1)) for m in range(terms)])
    out = np.convolve(root, asinh)[:terms]
    out[1] += 1.0
    return out


#: x <= e'²: 10 terms leave less than e'^10 ~ 1e-22 of t.
_T = _t_series(10)

# Gauss-Legendre nodes and weights on [-1, 1]: 2 for the short arcs of request areas, 8 for pieces of longer ones.
_X2, _W2 = np.polynomial.legendre.leggauss(2)
_X8, _W8 = np.polynomial.legendre.leggauss(8)
#: Arcs up to this long (radians) take 2 nodes: the error, ~ h^4/4320 of an integrand's fourth derivative (of
#: order 16 k²), stays under 1e-11 of the integral.
_SHORT_ARC = 0.02
#: ... longer ones are cut in pieces of at most this, 8 nodes each.
_PIECE = 0.5
_MAX_NEWTON = 40
_TINY = 2.0**-500
#: Edges spanning more longitude (degrees), or more arc on the auxiliary sphere (radians), go to pyproj: near
#: antipodal ends, where the inverse problem needs more care than request areas warrant.
_MAX_LON12 = 175.0
_MAX_ARC = math.radians(170.0)
#: Edges with both ends nearer the equator than this share of their longitude span go to pyproj too.
_NEAR_EQUATOR = 1e-7


@njit(cache=True, inline="always")
def _t_divided(x: float, y: float) -> float:
    """(t(x) - t(y)) / (x - y) by the power series (x, y in [0, e'²]): Σ c_n Σ_j x^j y^(n-1-j)."""
    total = 0.0
    # h_n = Σ_{j<n} x^j y^(n-1-j) = x h_{n-1} + y^(n-1)
    h = 0.0
    yp = 1.0
    for n in range(1, _T.shape[0]):
        h = x * h + yp
        yp *= y
        total += _T[n] * h
    return total


@njit(cache=True, inline="always")
def _nodes(h: float) -> tuple[np.ndarray, np.ndarray, int]:
    if h <= _SHORT_ARC:
        return _X2, _W2, 1
    return _X8, _W8, int(math.ceil(h / _PIECE))


@njit(cache=True, inline="always")
def _on_arc(salp0: float, sbet: float, calp_cbet: float) -> tuple[float, float, float, float]:
    """A point's (sin, cos) of its arc length σ from the equator crossing, normalised, and the unnormalised
    (sin, cos) of its longitude ω on the auxiliary sphere, from its reduced latitude and azimuth."""
    norm = math.hypot(sbet, calp_cbet)
    return sbet / norm, calp_cbet / norm, salp0 * sbet, calp_cbet


@njit(cache=True, _nrt=False)
def _lambda12(sbet1: float, cbet1: float, sbet2: float, cbet2: float, salp1: float, calp1: float,
              lam: float, out: np.ndarray) -> float:
    """λ12 reached from point 1 at azimuth α1 (canonical ends: β1 <= 0, |β2| <= |β1|), and in ``out``
    [dλ12/dα1, s12, S12] of that arc (S12 for the edge whose λ12 is ``lam``: the one this arc approaches). NaN
    when the arc does not reach β2 heading north."""
    salp0 = salp1 * cbet1
    calp0 = math.hypot(calp1, salp1 * sbet1)
    ssig1, csig1, somg1, comg1 = _on_arc(salp0, sbet1, calp1 * cbet1)
    salp2 = salp0 / cbet2 if cbet2 != cbet1 else salp1
    if cbet2 != cbet1 or -sbet1 != abs(sbet2):
        d = (calp1 * cbet1) ** 2 + (cbet2 - cbet1) * (cbet2 + cbet1) if cbet1 < -sbet1 else \
            (calp1 * cbet1) ** 2 + (sbet1 - sbet2) * (sbet1 + sbet2)
        if d < 0.0:
            return math.nan
        calp2 = math.sqrt(d) / cbet2
    else:
        calp2 = abs(calp1)
    ssig2, csig2, somg2, comg2 = _on_arc(salp0, sbet2, calp2 * cbet2)
    sig12 = math.atan2(max(0.0, csig1 * ssig2 - ssig1 * csig2), csig1 * csig2 + ssig1 * ssig2)
    omg12 = math.atan2(somg2 * comg1 - comg2 * somg1, comg2 * comg1 + somg2 * somg1)
    k2 = _EP2 * calp0 * calp0
    sig1 = math.atan2(ssig1, csig1)
    xs, ws, pieces = _nodes(sig12)
    step = sig12 / pieces
    i3 = 0.0
    i1 = 0.0
    j12 = 0.0
    i4 = 0.0
    for p in range(pieces):
        mid = sig1 + (p + 0.5) * step
        for q in range(xs.shape[0]):
            sn = math.sin(mid + 0.5 * step * xs[q])
            w = 0.5 * step * ws[q]
            x = k2 * sn * sn
            dn = math.sqrt(1.0 + x)
            i3 += w * (2.0 - F) / (1.0 + (1.0 - F) * dn)
            i1 += w * dn
            j12 += w * (dn - 1.0 / dn)
            i4 += w * _t_divided(_EP2, x) * sn * 0.5
    lam12 = omg12 - F * salp0 * i3
    dn1 = math.sqrt(1.0 + k2 * ssig1 * ssig1)
    dn2 = math.sqrt(1.0 + k2 * ssig2 * ssig2)
    m12 = _B * (dn2 * csig1 * ssig2 - dn1 * ssig1 * csig2 - csig1 * csig2 * j12)
    out[0] = m12 / (A * calp2 * cbet2) if calp2 != 0.0 else math.nan
    out[1] = _B * i1
    omg = lam + F * salp0 * i3  # ω12 of the edge's own λ12, without the cancellation of ω2 - ω1
    comg = math.cos(omg)
    if comg > -0.7071 and sbet2 - sbet1 < 1.75:
        # α2 - α1 as the excess of the quadrilateral on the auxiliary sphere (the edge, two meridians, the
        # equator): tan(E/2) = tan(ω12/2) (t1 + t2) / (1 + t1 t2), t = tan(β/2); precise for short edges
        dbet1 = 1.0 + cbet1
        dbet2 = 1.0 + cbet2
        alp12 = 2.0 * math.atan2(math.sin(omg) * (sbet1 * dbet2 + sbet2 * dbet1),
                                 (1.0 + comg) * (sbet1 * sbet2 + dbet1 * dbet2))
    else:
        alp12 = math.atan2(salp2 * calp1 - calp2 * salp1, calp2 * calp1 + salp2 * salp1)
    out[2] = _C2 * alp12 - _E2 * A * A * calp0 * salp0 * i4
    out[3] = sig12
    return lam12


@njit(cache=True, _nrt=False)
def edge(lon1: float, lat1: float, lon2: float, lat2: float, out: np.ndarray) -> bool:
    """The geodesic from (lon1, lat1) to (lon2, lat2) (degrees, ``|lon2 - lon1| <= 180``, not wrapped): ``out[0]``
    its length (m), ``out[1]`` the signed area between it and the equator (m², GeographicLib's S12); ``out``
    holds 4 floats (the others scratch). False when this kernel cannot settle it: the caller asks pyproj."""
    if lat1 == lat2 and lon1 == lon2:
        out[0] = 0.0
        out[1] = 0.0
        return True
    sign = 1.0
    lon12 = lon2 - lon1
    if abs(lat1) < abs(lat2):  # the end farther from the equator first
        lat1, lat2 = lat2, lat1
        lon12 = -lon12
        sign = -sign
    if lat1 > 0.0:  # ... in the south
        lat1 = -lat1
        lat2 = -lat2
        sign = -sign
    if lon12 < 0.0:  # ... and the other end to the east
        lon12 = -lon12
        sign = -sign
    if not (lat1 > -90.0 and lon12 <= _MAX_LON12):
        return False
    lam = math.radians(lon12)
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    sbet1 = (1.0 - F) * math.sin(p1)
    cbet1 = math.cos(p1)
    n = math.hypot(sbet1, cbet1)
    sbet1 /= n
    cbet1 /= n
    sbet2 = (1.0 - F) * math.sin(p2)
    cbet2 = math.cos(p2)
    n = math.hypot(sbet2, cbet2)
    sbet2 /= n
    cbet2 /= n
    if lon12 == 0.0:  # along a meridian, northward: no area to the equator
        _lambda12(sbet1, cbet1, sbet2, cbet2, 0.0, 1.0, 0.0, out)
        out[0] = out[1]
        out[1] = 0.0
        return True
    if sbet1 == 0.0 and sbet2 == 0.0:  # along the equator (lon12 <= 175 < (1 - f) 180)
        out[0] = A * lam
        out[1] = 0.0
        return True
    if max(-sbet1, abs(sbet2)) < _NEAR_EQUATOR * lam:
        return False  # nearly along the equator: α1 is within rounding of 90°, so not settled by Newton on it
    # start: the great circle on the auxiliary sphere, its longitude scaled to the mean latitude's
    dnm = math.sqrt(1.0 + _EP2 * ((sbet1 + sbet2) / 2.0) ** 2)
    omg = lam / ((1.0 - F) * dnm)
    # α1 as (sin, cos), so that an azimuth near 90° keeps its cosine's precision; bracketed in (0, π)
    salp = cbet2 * math.sin(omg)
    calp = cbet1 * sbet2 - sbet1 * cbet2 * math.cos(omg)
    n = math.hypot(salp, calp)
    salp /= n
    calp /= n
    slo, clo, shi, chi = _TINY, 1.0, _TINY, -1.0
    tol = 4.0 * 2.0**-52 * max(1.0, lam)
    for _ in range(_MAX_NEWTON):
        v = _lambda12(sbet1, cbet1, sbet2, cbet2, salp, calp, lam, out) - lam
        if math.isfinite(v) and abs(v) <= tol:
            if out[3] > _MAX_ARC:
                return False
            out[0] = out[1]
            out[1] = sign * out[2]
            return True
        if not math.isfinite(v) or v > 0.0:  # past β2 heading north, or east of it: an upper bound
            shi, chi = salp, calp
        else:
            slo, clo = salp, calp
        d = out[0]
        dalp = -v / d if math.isfinite(v) and d > 0.0 else 0.0
        sdalp = math.sin(dalp)
        cdalp = math.cos(dalp)
        snxt = salp * cdalp + calp * sdalp
        cnxt = calp * cdalp - salp * sdalp
        # inside the bracket (sin of the angle from lo to it, and from it to hi, positive) and moved: take it
        if dalp != 0.0 and clo * snxt - slo * cnxt > 0.0 and cnxt * shi - snxt * chi > 0.0 and \
                (snxt != salp or cnxt != calp):
            salp, calp = snxt, cnxt
        else:  # bisect
            salp = slo + shi
            calp = clo + chi
        n = math.hypot(salp, calp)
        salp /= n
        calp /= n
        if (salp == slo and calp == clo) or (salp == shi and calp == chi):
            return False  # the bracket is down to adjacent floats and λ12 still off: pyproj decides
    return False


@njit(cache=True)
def polygon_area_perimeter(xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray,
                           out: np.ndarray) -> None:
    """Per polygon ``p``: ``out[p, 0]`` its area (m², the shell's less its holes', orientation ignored) and
    ``out[p, 1]`` its shell's perimeter (m), as :func:`pyproj.Geod.polygon_area_perimeter` measures each ring;
    NaN for a polygon with an edge :func:`edge` cannot settle or a ring over a quarter of the ellipsoid."""
    res = np.empty(4)
    for p in range(poly_ptr.shape[0] - 1):
        area = 0.0
        perimeter = 0.0
        for r in range(poly_ptr[p], poly_ptr[p + 1]):
            ring_area = 0.0
            ring_length = 0.0
            for i in range(ring_ptr[r], ring_ptr[r + 1] - 1):
                if not edge(xs[i], ys[i], xs[i + 1], ys[i + 1], res):
                    ring_area = math.nan
                    break
                ring_length += res[0]
                ring_area += res[1]
            if not abs(ring_area) <= SURFACE / 4.0:
                area = math.nan
                perimeter = math.nan
                break
            if r == poly_ptr[p]:
                area = abs(ring_area)
                perimeter = ring_length
            else:
                area -= abs(ring_area)
        out[p, 0] = area
        out[p, 1] = perimeter
