"""Numba kernels of the decoder: blob localisation on raw frames and the per-frame pose fit.

Localisation reads each frame about once and mostly much less: a strided coarse grid finds each
blob and the background levels, then one window per blob at full resolution accumulates the
moments of a weighted log-Gaussian least-squares fit. The pose fit triangulates the three points
over all views, aligns the rigid three-point model (Kabsch) and refines the 6-DoF pose by
Gauss-Newton on the reprojection error of every observation.
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


@numba.njit(parallel=True, cache=True)
def localise(
    images: np.ndarray,
    scale: float,
    offset: float,
    sigma: float,
    stride: int,
    radius: int,
    detect: np.ndarray,
    fit_floor: np.ndarray,
    moments: np.ndarray,
    info: np.ndarray,
    background: np.ndarray,
) -> None:
    """Find the three blobs of every frame and accumulate their fit moments.

    images: [N, H, W, 3] uint8 or float (value = raw·scale + offset). detect [3]: minimum
    box-filtered coarse peak (above background for R, G; raw for B) for a blob to count as
    present. fit_floor [3]: pixels at or below it are left out of the fit (for B it sits above the
    0.25 truncation step). Outputs: moments [N, 3, 14] (coordinates relative to the window centre
    in units of sigma), info [N, 3, 4] (peak, pixel count, window centre x, y; count 0 = absent),
    background [N, 3] (median of the coarse grid per channel).
    """
    n, height, width = images.shape[0], images.shape[1], images.shape[2]
    off0 = stride // 2
    hc = (height - off0 + stride - 1) // stride
    wc = (width - off0 + stride - 1) // stride
    inv_sigma = 1.0 / sigma
    for k in numba.prange(n):
        coarse = np.empty((3, hc, wc), dtype=np.float32)
        for ci in range(hc):
            i = off0 + ci * stride
            for cj in range(wc):
                j = off0 + cj * stride
                for c in range(3):
                    coarse[c, ci, cj] = images[k, i, j, c] * scale + offset
        for c in range(3):
            bg = np.median(coarse[c])
            background[k, c] = bg
            base = bg if c < 2 else 0.0
            best, bi, bj = -1e30, 0, 0
            for ci in range(hc):
                for cj in range(wc):
                    acc, cnt = 0.0, 0
                    for di in range(max(ci - 1, 0), min(ci + 2, hc)):
                        for dj in range(max(cj - 1, 0), min(cj + 2, wc)):
                            acc += coarse[c, di, dj]
                            cnt += 1
                    val = acc / cnt - base
                    if val > best:
                        best, bi, bj = val, ci, cj
            info[k, c, INFO_PEAK] = best
            y0 = off0 + bi * stride
            x0 = off0 + bj * stride
            info[k, c, INFO_X0] = x0
            info[k, c, INFO_Y0] = y0
            for m in range(NUM_MOMENTS):
                moments[k, c, m] = 0.0
            info[k, c, INFO_COUNT] = 0.0
            if best < detect[c]:
                continue
            floor = fit_floor[c]
            count = 0
            s = np.zeros(NUM_MOMENTS)
            for i in range(max(y0 - radius, 0), min(y0 + radius + 1, height)):
                y = (i - y0) * inv_sigma
                for j in range(max(x0 - radius, 0), min(x0 + radius + 1, width)):
                    val = images[k, i, j, c] * scale + offset - base
                    if val <= floor:
                        continue
                    x = (j - x0) * inv_sigma
                    r2 = x * x + y * y
                    w = val * val
                    z = math.log(val)
                    s[0] += w
                    s[1] += w * x
                    s[2] += w * y
                    s[3] += w * r2
                    s[4] += w * x * x
                    s[5] += w * x * y
                    s[6] += w * x * r2
                    s[7] += w * y * y
                    s[8] += w * y * r2
                    s[9] += w * r2 * r2
                    s[10] += w * z
                    s[11] += w * z * x
                    s[12] += w * z * y
                    s[13] += w * z * r2
                    count += 1
            for m in range(NUM_MOMENTS):
                moments[k, c, m] = s[m]
            info[k, c, INFO_COUNT] = count


@numba.njit(cache=True)
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


@numba.njit(parallel=True, cache=True)
def solve_blobs(
    moments: np.ndarray, info: np.ndarray, sigma: float, fixed_sigma: float, out: np.ndarray
) -> None:
    """Blob centres from the moments: out [N, 3, 5] = (u, v, sigma_px, amplitude, mode).

    mode 1: free-sigma fit (4 parameters); mode 2: sigma fixed at `fixed_sigma` px (3
    parameters, for blobs cut by the image border, where a free width is ill-conditioned);
    mode 0: absent or degenerate (u, v NaN). Free fits are tried first and kept when their
    centre lies at least one sigma inside the fitted pixels' window and their width is plausible.
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
            if np.linalg.cond(a) < 1e12:
                coef = np.linalg.solve(a, b)
                if coef[3] < 0:
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
            if np.linalg.cond(a3) > 1e12:
                continue
            coef3 = np.linalg.solve(a3, b3)
            cx = -coef3[1] / (2.0 * c3)
            cy = -coef3[2] / (2.0 * c3)
            out[k, c, 0] = x0 + cx * sigma
            out[k, c, 1] = y0 + cy * sigma
            out[k, c, 2] = fixed_sigma
            out[k, c, 3] = math.exp(coef3[0] - c3 * (cx * cx + cy * cy))
            out[k, c, 4] = 2.0


@numba.njit(cache=True)
def _ray(K: np.ndarray, c2w: np.ndarray, u: float, v: float) -> tuple[np.ndarray, np.ndarray]:
    d_cam = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
    d = np.ascontiguousarray(c2w[:3, :3]) @ d_cam
    return c2w[:3, 3].copy(), d / np.linalg.norm(d)


@numba.njit(cache=True)
def _triangulate(origins: np.ndarray, dirs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares point nearest to the rays; NaN when they are (near) parallel."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for i in range(origins.shape[0]):
        proj = np.eye(3) - np.outer(dirs[i], dirs[i])
        a += weights[i] * proj
        b += weights[i] * (proj @ origins[i])
    if np.linalg.cond(a) > 1e8:
        return np.full(3, np.nan)
    return np.linalg.solve(a, b)


@numba.njit(cache=True)
def _kabsch(model: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation p with points ~ p + R @ model (rows), det(R) = +1."""
    mc = np.zeros(3)
    pc = np.zeros(3)
    for i in range(3):
        mc += model[i] / 3.0
        pc += points[i] / 3.0
    h = np.zeros((3, 3))
    for i in range(3):
        h += np.outer(points[i] - pc, model[i] - mc)
    u, _, vt = np.linalg.svd(h)
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ d @ vt
    return rot, pc - rot @ mc


@numba.njit(cache=True)
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
        centre = 0.5 * (known[1] + known[2])
        axis = known[2] - known[1]
        radius = 0.5 * np.linalg.norm(axis)
    else:
        other = 2 if k == 1 else 1
        centre = known[0].copy()
        axis = known[other] - known[0]
        radius = length
    axis = axis / np.linalg.norm(axis)
    denom = direction @ axis
    parallel = abs(denom) < 1e-6
    s = (centre - origin) @ direction if parallel else ((centre - origin) @ axis) / denom
    hit = origin + s * direction
    off = hit - centre
    off -= (off @ axis) * axis
    norm = np.linalg.norm(off)
    if norm < 1e-9:
        return hit
    return centre + radius * off / norm


@numba.njit(cache=True)
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
        length = np.linalg.norm(model[1] - model[0])
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
            radius = np.linalg.norm(model[k] - model[anchor])
            o, d = single_origin[k], single_dir[k]
            s0 = (points[anchor] - o) @ d
            miss = np.linalg.norm(o + s0 * d - points[anchor])
            half = math.sqrt(max(radius * radius - miss * miss, 0.0))
            sign = 1.0 if (q >> bit) & 1 else -1.0
            out[q, k] = o + (s0 + sign * half) * d
            bit += 1
    return out


@numba.njit(cache=True)
def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


@numba.njit(cache=True)
def _expm(w: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(w)
    k = _skew(w)
    if theta < 1e-12:
        return np.eye(3) + k
    return (
        np.eye(3)
        + (math.sin(theta) / theta) * k
        + ((1.0 - math.cos(theta)) / (theta * theta)) * (k @ k)
    )


@numba.njit(cache=True)
def _residuals(
    pos: np.ndarray,
    rot: np.ndarray,
    model: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    uv: np.ndarray,
    weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted reprojection residuals r [V*3*2] and Jacobian J [V*3*2, 6] (d pos, d rot)."""
    num_views = uv.shape[0]
    r = np.zeros(num_views * 6)
    jac = np.zeros((num_views * 6, 6))
    for v in range(num_views):
        rc = np.ascontiguousarray(c2w[v, :3, :3])
        t = c2w[v, :3, 3]
        for k in range(3):
            w = weight[v, k]
            if w <= 0.0:
                continue
            sw = math.sqrt(w)
            rm = rot @ model[k]
            xw = pos + rm
            xc = rc.T @ (xw - t)
            z = xc[2]
            row = (v * 3 + k) * 2
            if z <= 1e-6:
                r[row] = sw * 1e3
                r[row + 1] = sw * 1e3
                continue
            fx, fy = K[v, 0, 0], K[v, 1, 1]
            r[row] = sw * (fx * xc[0] / z + K[v, 0, 2] - uv[v, k, 0])
            r[row + 1] = sw * (fy * xc[1] / z + K[v, 1, 2] - uv[v, k, 1])
            dproj = np.array(
                [[fx / z, 0.0, -fx * xc[0] / (z * z)], [0.0, fy / z, -fy * xc[1] / (z * z)]]
            )
            dcam = dproj @ np.ascontiguousarray(rc.T)
            drot = -dcam @ _skew(rm)
            for q in range(3):
                jac[row, q] = sw * dcam[0, q]
                jac[row + 1, q] = sw * dcam[1, q]
                jac[row, 3 + q] = sw * drot[0, q]
                jac[row + 1, 3 + q] = sw * drot[1, q]
    return r, jac


@numba.njit(cache=True)
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
    """Levenberg-Marquardt on the reprojection error; returns pos, rot, weighted SSE."""
    r, jac = _residuals(pos, rot, model, K, c2w, uv, weight)
    cost = r @ r
    lam = 1e-6
    for _ in range(iterations):
        jtj = jac.T @ jac
        g = jac.T @ r
        scale = np.array([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])
        improved = False
        for _try in range(6):
            a = jtj.copy()
            for q in range(6):
                a[q, q] += lam * (jtj[q, q] + 1e-9)
            step = -np.linalg.solve(a, g)
            new_pos = pos + step[:3]
            new_rot = rot @ _expm(step[3:])
            r2, jac2 = _residuals(new_pos, new_rot, model, K, c2w, uv, weight)
            cost2 = r2 @ r2
            if cost2 <= cost:
                pos, rot, r, jac, cost = new_pos, new_rot, r2, jac2, cost2
                lam = max(lam * 0.1, 1e-9)
                improved = True
                break
            lam *= 10.0
        if not improved or np.max(np.abs(step * scale)) < 1e-10:
            break
    return pos, rot, cost


@numba.njit(parallel=True, cache=True)
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
        pose[t] = np.nan
        stats[t, 0] = np.nan
        seen = np.zeros(3, dtype=np.int64)
        for v in range(num_views):
            for k in range(3):
                if weight[t, v, k] > 0:
                    seen[k] += 1
        stats[t, 1] = seen.sum()
        stats[t, 2] = 1.0 if seen.min() >= 2 else 0.0
        if seen.min() < 1 or seen.max() < 2:
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
        pose[t, :3, :3] = rot
        pose[t, :3, 3] = pos
        pose[t, 3, :3] = 0.0
        pose[t, 3, 3] = 1.0
        stats[t, 0] = math.sqrt(cost / max(wsum, 1e-12))
