"""Numba kernels of the decoder: blob localisation on raw frames and the per-frame pose fit.

Localisation reads each frame about once and mostly much less: a strided coarse grid finds each
blob and the background levels, then one window per blob at full resolution accumulates the
moments of a weighted log-Gaussian least-squares fit. The pose fit triangulates the three points
over all views, aligns the rigid three-point model to them (Procrustes) and refines the 6-DoF
pose by Levenberg-Marquardt on the reprojection error of every observation.
"""

from __future__ import annotations

import math

import numba
import numpy as np

NUM_MOMENTS = 14
"""Moments of the log-Gaussian fit: 10 of sum(w·phi·phi^T) and 4 of sum(w·z·phi), phi=(1,x,y,r2)."""

# Columns of the per-blob info array written by `localise`.
INFO_PEAK, INFO_COUNT, INFO_X0, INFO_Y0 = 0, 1, 2, 3
NUM_INFO = 4


HIST_BINS = 1020
"""Histogram bins on [0, 1] for the background median (a multiple of 255: exact for uint8)."""


@numba.njit(cache=True, error_model="numpy")
def _histogram_median(hist: np.ndarray) -> float:
    half = hist.sum() / 2.0
    acc = 0
    for b in range(hist.shape[0]):
        acc += hist[b]
        if acc >= half:
            return b / HIST_BINS
    return 1.0


@numba.njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def localise(
    images: np.ndarray,
    scale: float,
    offset: float,
    sigma: float,
    stride: int,
    fit_stride: int,
    radius: int,
    detect: np.ndarray,
    fit_floor: np.ndarray,
    moments: np.ndarray,
    info: np.ndarray,
    background: np.ndarray,
) -> None:
    """Find the three blobs of every frame and accumulate their fit moments.

    images: [N, H, W, 3] uint8 or float (value = raw·scale + offset). The coarse grid samples
    every `stride` pixels; the fit window (half-width `radius`) every `fit_stride` pixels, since
    a blob of sigma >= 10 px is oversampled. detect [3]: minimum 3x3-smoothed coarse peak (above
    background for R, G; raw for B) for a blob to count as present. fit_floor [3]: pixels at or
    below it are left out of the fit (for B it sits above the 0.25 truncation step). Outputs:
    moments [N, 3, 14] (coordinates relative to the window centre in units of sigma), info
    [N, 3, 4] (smoothed peak, pixel count, window centre x, y; count 0 = absent), background
    [N, 3] (median of every other coarse sample per channel, to 1/1020).
    """
    n, height, width = images.shape[0], images.shape[1], images.shape[2]
    off0 = stride // 2
    hc = (height - off0 + stride - 1) // stride
    wc = (width - off0 + stride - 1) // stride
    inv_sigma = 1.0 / sigma
    for k in numba.prange(n):
        coarse = np.empty((3, hc, wc), dtype=np.float32)
        hist = np.zeros((3, HIST_BINS + 1), dtype=np.int64)
        best = np.full(3, -1e30)
        best_i = np.zeros(3, dtype=np.int64)
        best_j = np.zeros(3, dtype=np.int64)
        for ci in range(hc):
            i = off0 + ci * stride
            for cj in range(wc):
                j = off0 + cj * stride
                for c in range(3):
                    val = images[k, i, j, c] * scale + offset
                    coarse[c, ci, cj] = val
                    if val > best[c]:
                        best[c] = val
                        best_i[c] = ci
                        best_j[c] = cj
                    if (ci & 1) == 0 and (cj & 1) == 0:
                        hist[c, min(max(int(val * HIST_BINS + 0.5), 0), HIST_BINS)] += 1
        for c in range(3):
            bg = _histogram_median(hist[c])
            background[k, c] = bg
            base = bg if c < 2 else 0.0
            bi, bj = best_i[c], best_j[c]
            acc, cnt = 0.0, 0
            for di in range(max(bi - 1, 0), min(bi + 2, hc)):
                for dj in range(max(bj - 1, 0), min(bj + 2, wc)):
                    acc += coarse[c, di, dj]
                    cnt += 1
            peak = acc / cnt - base
            info[k, c, INFO_PEAK] = peak
            y0 = off0 + bi * stride
            x0 = off0 + bj * stride
            info[k, c, INFO_X0] = x0
            info[k, c, INFO_Y0] = y0
            for m in range(NUM_MOMENTS):
                moments[k, c, m] = 0.0
            info[k, c, INFO_COUNT] = 0.0
            if peak < detect[c]:
                continue
            floor = fit_floor[c]
            count = 0
            s = np.zeros(NUM_MOMENTS)
            for i in range(max(y0 - radius, 0), min(y0 + radius + 1, height), fit_stride):
                y = (i - y0) * inv_sigma
                for j in range(max(x0 - radius, 0), min(x0 + radius + 1, width), fit_stride):
                    val = images[k, i, j, c] * scale + offset - base
                    if val <= floor:
                        continue
                    x = (j - x0) * inv_sigma
                    r2 = x * x + y * y
                    w = val * val
                    z = math.log(val)
                    wx, wy, wr2, wz = w * x, w * y, w * r2, w * z
                    s[0] += w
                    s[1] += wx
                    s[2] += wy
                    s[3] += wr2
                    s[4] += wx * x
                    s[5] += wx * y
                    s[6] += wx * r2
                    s[7] += wy * y
                    s[8] += wy * r2
                    s[9] += wr2 * r2
                    s[10] += wz
                    s[11] += wz * x
                    s[12] += wz * y
                    s[13] += wz * r2
                    count += 1
            for m in range(NUM_MOMENTS):
                moments[k, c, m] = s[m]
            info[k, c, INFO_COUNT] = count


@numba.njit(cache=True, error_model="numpy")
def _normal_matrix(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.empty((4, 4))
    a[0, 0], a[0, 1], a[0, 2], a[0, 3] = s[0], s[1], s[2], s[3]
    a[1, 1], a[1, 2], a[1, 3] = s[4], s[5], s[6]
    a[2, 2], a[2, 3] = s[7], s[8]
    a[3, 3] = s[9]
    for i in range(4):
        for j in range(i):
            a[i, j] = a[j, i]
    b = np.array([s[10], s[11], s[12], s[13]])
    return a, b


@numba.njit(cache=True, error_model="numpy")
def solve_blobs(
    moments: np.ndarray, info: np.ndarray, sigma: float, fixed_sigma: float, out: np.ndarray
) -> None:
    """Blob centres from the moments: out [N, 3, 5] = (u, v, sigma_px, amplitude, mode).

    mode 1: free-sigma fit (4 parameters); mode 2: sigma fixed at `fixed_sigma` px (3
    parameters, for blobs cut by the image border, where a free width is ill-conditioned);
    mode 0: absent or degenerate (u, v NaN). Free fits are tried first and kept when their
    width is plausible (0.5-2 x `sigma`) and their centre within 1.2 sigma of the window centre.
    """
    n = moments.shape[0]
    for k in numba.prange(n):
        for c in range(3):
            out[k, c, 0] = np.nan
            out[k, c, 1] = np.nan
            out[k, c, 2] = np.nan
            out[k, c, 3] = 0.0
            out[k, c, 4] = 0.0
            if info[k, c, INFO_COUNT] < 6:
                continue
            a, b = _normal_matrix(moments[k, c])
            x0, y0 = info[k, c, INFO_X0], info[k, c, INFO_Y0]
            done = False
            coef = np.zeros(4)
            if _solve_small(a, b, coef) and coef[3] < 0:
                sig = math.sqrt(-1.0 / (2.0 * coef[3]))
                cx = -coef[1] / (2.0 * coef[3])
                cy = -coef[2] / (2.0 * coef[3])
                if 0.5 < sig < 2.0 and abs(cx) < 1.2 and abs(cy) < 1.2:
                    out[k, c, 0] = x0 + cx * sigma
                    out[k, c, 1] = y0 + cy * sigma
                    out[k, c, 2] = sig * sigma
                    out[k, c, 3] = math.exp(coef[0] - coef[3] * (cx * cx + cy * cy))
                    out[k, c, 4] = 1.0
                    done = True
            if done:
                continue
            c3 = -0.5 * (sigma / fixed_sigma) ** 2
            a3 = a[:3, :3].copy()
            b3 = b[:3] - c3 * a[:3, 3]
            coef3 = np.zeros(3)
            if not _solve_small(a3, b3, coef3):
                continue
            cx = -coef3[1] / (2.0 * c3)
            cy = -coef3[2] / (2.0 * c3)
            out[k, c, 0] = x0 + cx * sigma
            out[k, c, 1] = y0 + cy * sigma
            out[k, c, 2] = fixed_sigma
            out[k, c, 3] = math.exp(coef3[0] - c3 * (cx * cx + cy * cy))
            out[k, c, 4] = 2.0


# Small fixed-size helpers written out by hand: Numba's generic `@`, np.cross, np.outer and
# array expressions each compile to sizeable code, which multiplies the first-call compile time.


@numba.njit(cache=True, error_model="numpy")
def _dot3(a: np.ndarray, b: np.ndarray) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


@numba.njit(cache=True, error_model="numpy")
def _norm3(a: np.ndarray) -> float:
    return math.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])


@numba.njit(cache=True, error_model="numpy")
def _axpy3(a: np.ndarray, s: float, b: np.ndarray) -> np.ndarray:
    """a + s·b for 3-vectors, as a new array."""
    out = np.empty(3)
    for i in range(3):
        out[i] = a[i] + s * b[i]
    return out


@numba.njit(cache=True, error_model="numpy")
def _cross3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(3)
    out[0] = a[1] * b[2] - a[2] * b[1]
    out[1] = a[2] * b[0] - a[0] * b[2]
    out[2] = a[0] * b[1] - a[1] * b[0]
    return out


@numba.njit(cache=True, error_model="numpy")
def _matvec3(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.empty(3)
    for i in range(3):
        out[i] = a[i, 0] * v[0] + a[i, 1] * v[1] + a[i, 2] * v[2]
    return out


@numba.njit(cache=True, error_model="numpy")
def _matmul3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]
    return out


@numba.njit(cache=True, error_model="numpy")
def _ray(K: np.ndarray, c2w: np.ndarray, u: float, v: float) -> tuple[np.ndarray, np.ndarray]:
    d_cam = np.empty(3)
    d_cam[0] = (u - K[0, 2]) / K[0, 0]
    d_cam[1] = (v - K[1, 2]) / K[1, 1]
    d_cam[2] = 1.0
    d = _matvec3(c2w, d_cam)
    return _axpy3(c2w[:3, 3], 0.0, d), _axpy3(d, 1.0 / _norm3(d) - 1.0, d)


@numba.njit(cache=True, error_model="numpy")
def _triangulate(origins: np.ndarray, dirs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares point nearest to the rays; NaN when they are (near) parallel."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for i in range(origins.shape[0]):
        d = dirs[i]
        along = _dot3(d, origins[i])
        for p in range(3):
            for q in range(3):
                proj = (1.0 if p == q else 0.0) - d[p] * d[q]
                a[p, q] += weights[i] * proj
            b[p] += weights[i] * (origins[i, p] - d[p] * along)
    x = np.zeros(3)
    size = (a[0, 0] + a[1, 1] + a[2, 2]) / 3.0
    if _det3(a) < 1e-6 * size**3 or not _solve_small(a, b, x):
        x[:] = np.nan
    return x


@numba.njit(cache=True, error_model="numpy")
def _det3(a: np.ndarray) -> float:
    return (
        a[0, 0] * (a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1])
        - a[0, 1] * (a[1, 0] * a[2, 2] - a[1, 2] * a[2, 0])
        + a[0, 2] * (a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0])
    )


@numba.njit(cache=True, error_model="numpy")
def _nearest_rotation(h: np.ndarray) -> np.ndarray:
    """Orthonormal factor of the polar decomposition of h (det h > 0), by Newton iteration.

    X <- (X + X^-T) / 2 converges quadratically to the nearest rotation; it needs no LAPACK,
    which keeps Numba's compile time down.
    """
    total = 0.0
    for i in range(3):
        for j in range(3):
            total += abs(h[i, j])
    x = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            x[i, j] = h[i, j] * 3.0 / total
    for _ in range(30):
        det = _det3(x)
        if abs(det) < 1e-300:
            break
        inv_t = np.empty((3, 3))  # (x^-1)^T = cofactor(x) / det
        for i in range(3):
            for j in range(3):
                i1, i2 = (i + 1) % 3, (i + 2) % 3
                j1, j2 = (j + 1) % 3, (j + 2) % 3
                inv_t[i, j] = (x[i1, j1] * x[i2, j2] - x[i1, j2] * x[i2, j1]) / det
        change = 0.0
        for i in range(3):
            for j in range(3):
                new = 0.5 * (x[i, j] + inv_t[i, j])
                change = max(change, abs(new - x[i, j]))
                x[i, j] = new
        if change < 1e-15:
            break
    return x


@numba.njit(cache=True, error_model="numpy")
def _kabsch(model: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation p with points ~ p + R @ model (rows 0..2), det(R) = +1.

    Procrustes on the two edge vectors from point 0 and their cross product (which makes the
    correlation matrix full rank with a positive determinant for any non-degenerate triple).
    """
    h = np.zeros((3, 3))
    a = _axpy3(points[1], -1.0, points[0])
    b = _axpy3(points[2], -1.0, points[0])
    ma = _axpy3(model[1], -1.0, model[0])
    mb = _axpy3(model[2], -1.0, model[0])
    c = _cross3(a, b)
    mc = _cross3(ma, mb)
    c_scale = 1.0 / math.sqrt(_norm3(c) + 1e-300)
    mc_scale = 1.0 / math.sqrt(_norm3(mc) + 1e-300)
    for i in range(3):
        for j in range(3):
            h[i, j] = a[i] * ma[j] + b[i] * mb[j] + c[i] * c_scale * mc[j] * mc_scale
    rot = _nearest_rotation(h)
    centre_model = np.empty(3)
    centre_points = np.empty(3)
    for i in range(3):
        centre_model[i] = (model[0, i] + model[1, i] + model[2, i]) / 3.0
        centre_points[i] = (points[0, i] + points[1, i] + points[2, i]) / 3.0
    return rot, _axpy3(centre_points, -1.0, _matvec3(rot, centre_model))


@numba.njit(cache=True, error_model="numpy")
def _single_view_init(
    k: int, known: np.ndarray, origin: np.ndarray, direction: np.ndarray, length: float
) -> np.ndarray:
    """A start for point k seen in one view, from the two triangulated others.

    The rigid model puts point k on a circle fixed by the other two (normal and up points:
    around the position, in the plane perpendicular to the other axis; the position: on the
    Thales circle of the other two, in their bisector plane). The view's ray meets that plane
    once; the result is that crossing pulled onto the circle.
    """
    if k == 0:
        axis = _axpy3(known[2], -1.0, known[1])
        centre = _axpy3(known[1], 0.5, axis)
        radius = 0.5 * _norm3(axis)
    else:
        other = 2 if k == 1 else 1
        centre = _axpy3(known[0], 0.0, known[0])
        axis = _axpy3(known[other], -1.0, known[0])
        radius = length
    axis = _axpy3(axis, 1.0 / _norm3(axis) - 1.0, axis)
    denom = _dot3(direction, axis)
    to_centre = _axpy3(centre, -1.0, origin)
    parallel = abs(denom) < 1e-6
    s = _dot3(to_centre, direction) if parallel else _dot3(to_centre, axis) / denom
    hit = _axpy3(origin, s, direction)
    off = _axpy3(hit, -1.0, centre)
    off = _axpy3(off, -_dot3(off, axis), axis)
    norm = _norm3(off)
    if norm < 1e-9:
        return hit
    return _axpy3(centre, radius / norm, off)


@numba.njit(cache=True, error_model="numpy")
def _starts(
    points: np.ndarray,
    known: int,
    single_origin: np.ndarray,
    single_dir: np.ndarray,
    model: np.ndarray,
) -> np.ndarray:
    """Candidate point triples [S, 3, 3] to start the pose fit from.

    Triangulated points are kept. With one point seen by a single view, its place on the rigid
    circle is unique (`_single_view_init`). With two, each lies on its ray at its model distance
    from the triangulated point: two crossings each, so four starts; the fit keeps the best.
    """
    if known == 3:
        out = np.empty((1, 3, 3))
        out[0] = points
        return out
    if known == 2:
        length = _norm3(_axpy3(model[1], -1.0, model[0]))
        out = np.empty((1, 3, 3))
        out[0] = points
        for k in range(3):
            if np.isnan(points[k, 0]):
                out[0, k] = _single_view_init(k, points, single_origin[k], single_dir[k], length)
        return out
    anchor = 0
    for k in range(3):
        if not np.isnan(points[k, 0]):
            anchor = k
    out = np.empty((4, 3, 3))
    for q in range(4):
        out[q] = points
        bit = 0
        for k in range(3):
            if k == anchor:
                continue
            radius = _norm3(_axpy3(model[k], -1.0, model[anchor]))
            o, d = single_origin[k], single_dir[k]
            s0 = _dot3(_axpy3(points[anchor], -1.0, o), d)
            miss = _norm3(_axpy3(_axpy3(o, s0, d), -1.0, points[anchor]))
            half = math.sqrt(max(radius * radius - miss * miss, 0.0))
            sign = 1.0 if (q >> bit) & 1 else -1.0
            out[q, k] = _axpy3(o, s0 + sign * half, d)
            bit += 1
    return out


@numba.njit(cache=True, error_model="numpy")
def _expm(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector w (Rodrigues)."""
    theta = math.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2])
    if theta < 1e-12:
        a, b = 1.0, 0.5
    else:
        a = math.sin(theta) / theta
        b = (1.0 - math.cos(theta)) / (theta * theta)
    out = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            out[i, j] = b * w[i] * w[j] + (1.0 - b * theta * theta if i == j else 0.0)
    out[0, 1] -= a * w[2]
    out[1, 0] += a * w[2]
    out[0, 2] += a * w[1]
    out[2, 0] -= a * w[1]
    out[1, 2] -= a * w[0]
    out[2, 1] += a * w[0]
    return out


@numba.njit(cache=True, error_model="numpy")
def _residuals(
    pos: np.ndarray,
    rot: np.ndarray,
    model: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    uv: np.ndarray,
    weight: np.ndarray,
    r: np.ndarray,
    jac: np.ndarray,
) -> float:
    """Fill weighted reprojection residuals r [V*3*2] and Jacobian jac [V*3*2, 6] (d pos,
    d rot as a left perturbation exp(w)·R); returns the weighted SSE."""
    num_views = uv.shape[0]
    cost = 0.0
    for v in range(num_views):
        fx, fy, cx, cy = K[v, 0, 0], K[v, 1, 1], K[v, 0, 2], K[v, 1, 2]
        for k in range(3):
            row = (v * 3 + k) * 2
            for q in range(6):
                jac[row, q] = 0.0
                jac[row + 1, q] = 0.0
            r[row] = 0.0
            r[row + 1] = 0.0
            w = weight[v, k]
            if w <= 0.0:
                continue
            sw = math.sqrt(w)
            rm0 = rot[0, 0] * model[k, 0] + rot[0, 1] * model[k, 1] + rot[0, 2] * model[k, 2]
            rm1 = rot[1, 0] * model[k, 0] + rot[1, 1] * model[k, 1] + rot[1, 2] * model[k, 2]
            rm2 = rot[2, 0] * model[k, 0] + rot[2, 1] * model[k, 1] + rot[2, 2] * model[k, 2]
            d0 = pos[0] + rm0 - c2w[v, 0, 3]
            d1 = pos[1] + rm1 - c2w[v, 1, 3]
            d2 = pos[2] + rm2 - c2w[v, 2, 3]
            xc = c2w[v, 0, 0] * d0 + c2w[v, 1, 0] * d1 + c2w[v, 2, 0] * d2
            yc = c2w[v, 0, 1] * d0 + c2w[v, 1, 1] * d1 + c2w[v, 2, 1] * d2
            z = c2w[v, 0, 2] * d0 + c2w[v, 1, 2] * d1 + c2w[v, 2, 2] * d2
            if z <= 1e-6:
                r[row] = sw * 1e3
                r[row + 1] = sw * 1e3
                cost += 2e6 * w
                continue
            iz = 1.0 / z
            r[row] = sw * (fx * xc * iz + cx - uv[v, k, 0])
            r[row + 1] = sw * (fy * yc * iz + cy - uv[v, k, 1])
            cost += r[row] * r[row] + r[row + 1] * r[row + 1]
            # d(u, v)/d(world point) = dproj @ Rc^T, with dproj the pinhole derivative
            for q in range(3):
                gu = sw * fx * iz * (c2w[v, q, 0] - xc * iz * c2w[v, q, 2])
                gv = sw * fy * iz * (c2w[v, q, 1] - yc * iz * c2w[v, q, 2])
                jac[row, q] = gu
                jac[row + 1, q] = gv
            # d(world point)/d(w) = -[R m]x for the left update exp(w)·R, so the row is R m x J
            for e in range(2):
                j0, j1, j2 = jac[row + e, 0], jac[row + e, 1], jac[row + e, 2]
                jac[row + e, 3] = rm1 * j2 - rm2 * j1
                jac[row + e, 4] = rm2 * j0 - rm0 * j2
                jac[row + e, 5] = rm0 * j1 - rm1 * j0
    return cost


@numba.njit(cache=True, error_model="numpy")
def _solve_small(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> bool:
    """Solve a x = b in place of x (n <= 6) by pivoted elimination; False if near singular."""
    n = b.shape[0]
    m = np.empty((n, n + 1))
    scale = 0.0
    for i in range(n):
        for j in range(n):
            m[i, j] = a[i, j]
            scale = max(scale, abs(a[i, j]))
        m[i, n] = b[i]
    if scale == 0.0:
        return False
    for col in range(n):
        piv = col
        for i in range(col + 1, n):
            if abs(m[i, col]) > abs(m[piv, col]):
                piv = i
        if abs(m[piv, col]) < 1e-13 * scale:
            return False
        if piv != col:
            for j in range(n + 1):
                m[col, j], m[piv, j] = m[piv, j], m[col, j]
        for i in range(col + 1, n):
            f = m[i, col] / m[col, col]
            for j in range(col, n + 1):
                m[i, j] -= f * m[col, j]
    for i in range(n - 1, -1, -1):
        acc = m[i, n]
        for j in range(i + 1, n):
            acc -= m[i, j] * x[j]
        x[i] = acc / m[i, i]
    return True


@numba.njit(cache=True, error_model="numpy")
def _fit_pose(
    pos: np.ndarray,
    rot: np.ndarray,
    model: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    uv: np.ndarray,
    weight: np.ndarray,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Levenberg-Marquardt on the reprojection error; returns pos, rot, weighted SSE.

    Updates `pos` in place. Written with explicit loops (no array expressions), which keeps
    Numba's compile time down.
    """
    rows = uv.shape[0] * 6
    r = np.zeros(rows)
    jac = np.zeros((rows, 6))
    r_new = np.zeros(rows)
    jac_new = np.zeros((rows, 6))
    jtj = np.zeros((6, 6))
    neg_g = np.zeros(6)
    a = np.zeros((6, 6))
    step = np.zeros(6)
    new_pos = np.zeros(3)
    cost = _residuals(pos, rot, model, K, c2w, uv, weight, r, jac)
    lam = 1e-6
    for _ in range(iterations):
        for p in range(6):
            acc = 0.0
            for i in range(rows):
                acc += jac[i, p] * r[i]
            neg_g[p] = -acc
            for q in range(p, 6):
                acc = 0.0
                for i in range(rows):
                    acc += jac[i, p] * jac[i, q]
                jtj[p, q] = acc
                jtj[q, p] = acc
        improved = False
        converged = False
        for _try in range(8):
            for p in range(6):
                for q in range(6):
                    a[p, q] = jtj[p, q]
                a[p, p] += lam * jtj[p, p] + 1e-12
            if not _solve_small(a, neg_g, step):
                lam *= 10.0
                continue
            largest = 0.0
            for q in range(6):
                largest = max(largest, abs(step[q]))
            for q in range(3):
                new_pos[q] = pos[q] + step[q]
            new_rot = _matmul3(_expm(step[3:]), rot)
            cost_new = _residuals(new_pos, new_rot, model, K, c2w, uv, weight, r_new, jac_new)
            if cost_new <= cost:
                converged = largest < 1e-9
                for q in range(3):
                    pos[q] = new_pos[q]
                rot = new_rot
                cost = cost_new
                r, r_new = r_new, r
                jac, jac_new = jac_new, jac
                lam = max(lam * 0.1, 1e-9)
                improved = True
                break
            lam *= 10.0
        if not improved or converged:
            break
    return pos, rot, cost


@numba.njit(cache=True, error_model="numpy")
def fit_poses(
    uv: np.ndarray,
    weight: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    model: np.ndarray,
    iterations: int,
    pose: np.ndarray,
    stats: np.ndarray,
) -> None:
    """Fit one rigid three-point pose per frame to the blob centres of every view.

    uv [T, V, 3, 2] px, weight [T, V, 3] (0 = not observed), K [V, 3, 3], c2w [V, 4, 4],
    model [3, 3] (the points in the tool frame). Outputs pose [T, 4, 4] (NaN when the frame
    cannot be solved) and stats [T, 3] = (weighted RMS reprojection error px, number of
    observations, 1 if every point was seen in at least two views else 0).
    """
    num_frames, num_views = uv.shape[0], uv.shape[1]
    for t in numba.prange(num_frames):
        for i in range(4):
            for j in range(4):
                pose[t, i, j] = np.nan
        stats[t, 0] = np.nan
        seen = np.zeros(3, dtype=np.int64)
        for v in range(num_views):
            for k in range(3):
                if weight[t, v, k] > 0:
                    seen[k] += 1
        fewest = min(seen[0], seen[1], seen[2])
        most = max(seen[0], seen[1], seen[2])
        stats[t, 1] = seen[0] + seen[1] + seen[2]
        stats[t, 2] = 1.0 if fewest >= 2 else 0.0
        if fewest < 1 or most < 2:
            continue
        points = np.full((3, 3), np.nan)
        single_origin = np.zeros((3, 3))
        single_dir = np.zeros((3, 3))
        for k in range(3):
            origins = np.zeros((seen[k], 3))
            dirs = np.zeros((seen[k], 3))
            ws = np.zeros(seen[k])
            m = 0
            for v in range(num_views):
                if weight[t, v, k] > 0:
                    o, d = _ray(K[v], c2w[v], uv[t, v, k, 0], uv[t, v, k, 1])
                    origins[m] = o
                    dirs[m] = d
                    ws[m] = weight[t, v, k]
                    m += 1
            if seen[k] >= 2:
                points[k] = _triangulate(origins, dirs, ws)
            else:
                single_origin[k] = origins[0]
                single_dir[k] = dirs[0]
        known = 0
        for k in range(3):
            if not np.isnan(points[k, 0]):
                known += 1
        if known == 0:
            continue
        starts = _starts(points, known, single_origin, single_dir, model)
        best_cost = np.inf
        pos = np.zeros(3)
        rot = np.eye(3)
        for q in range(starts.shape[0]):
            rot0, pos0 = _kabsch(model, starts[q])
            pos1, rot1, cost1 = _fit_pose(pos0, rot0, model, K, c2w, uv[t], weight[t], iterations)
            if cost1 < best_cost:
                best_cost, pos, rot = cost1, pos1, rot1
        cost = best_cost
        wsum = 0.0
        for v in range(num_views):
            for k in range(3):
                wsum += weight[t, v, k]
        for i in range(3):
            for j in range(3):
                pose[t, i, j] = rot[i, j]
            pose[t, i, 3] = pos[i]
            pose[t, 3, i] = 0.0
        pose[t, 3, 3] = 1.0
        stats[t, 0] = math.sqrt(cost / max(wsum, 1e-12))
