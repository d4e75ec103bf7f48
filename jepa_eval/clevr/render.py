"""Procedural CLEVR-like scenes: CLEVR's scene sampler and camera, rendered by a vectorised numpy ray caster.

Geometry follows ``clevr-dataset-gen/image_generation``: Blender's default camera (location jittered by up to
0.5 per axis, orientation fixed, 35 mm lens on a 32 mm sensor), objects at x, y ~ U(-3, 3) resting on the
ground (sphere/cylinder radius and cube half side r/sqrt(2), r = 0.7 large or 0.35 small), 0.25 minimum gap,
0.4 margin along the four cardinal directions, and a full resample when an object is (nearly) hidden.
``pixel_coords = [px, py, depth]`` like Blender's ``world_to_camera_view``: depth is the distance along the
view axis, which is what VTAB's Dist bins threshold.

Shading is Lambert + Blinn-Phong with a shadowing key light, a fill light, and for metal a mirror term
reflecting a ground/sky environment (other objects are not reflected).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

SHAPES = ("cube", "sphere", "cylinder")
COLORS = {"gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
          "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
SIZES = {"large": 0.7, "small": 0.35}
MATERIALS = ("rubber", "metal")

# Blender's default camera, which CLEVR's base scene uses.
CAMERA_LOCATION = np.array([7.358891487121582, -6.925790786743164, 4.958309173583984])
CAMERA_RIGHT = np.array([0.6859206557273865, 0.7276763319969177, 0.0])
CAMERA_UP = np.array([-0.32401347160339355, 0.305420845746994, 0.8953956365585327])
CAMERA_FORWARD = -np.cross(CAMERA_RIGHT, CAMERA_UP)
HALF_TAN = 16.0 / 35.0            # half sensor width / focal length
CAMERA_JITTER, MIN_DIST, MARGIN, MAX_RETRIES = 0.5, 0.25, 0.4, 50
MIN_VISIBLE_FRACTION = 200 / (480 * 320)   # CLEVR's min_pixels_per_object at its 480 x 320 renders
EPS = 1e-4


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# CLEVR's scene "directions": camera axes projected on the ground plane (the camera never rotates).
DIRECTIONS = {"behind": _unit(CAMERA_FORWARD * [1, 1, 0]), "left": _unit(-CAMERA_RIGHT * [1, 1, 0]),
              "above": np.array([0.0, 0.0, 1.0])}
DIRECTIONS.update(front=-DIRECTIONS["behind"], right=-DIRECTIONS["left"], below=-DIRECTIONS["above"])


@dataclass
class Camera:
    location: np.ndarray
    width: int
    height: int

    @property
    def half_extent(self) -> tuple[float, float]:
        # Blender's AUTO sensor fit: the sensor width spans the longer image side
        if self.width >= self.height:
            return HALF_TAN, HALF_TAN * self.height / self.width
        return HALF_TAN * self.width / self.height, HALF_TAN

    def project(self, points: np.ndarray) -> np.ndarray:
        """[N, 3] world points -> [N, 3] (x pixel, y pixel from the top, depth along the view axis)."""
        rel = points - self.location
        depth = rel @ CAMERA_FORWARD
        hx, hy = self.half_extent
        u = 0.5 + (rel @ CAMERA_RIGHT) / depth / (2 * hx)
        v = 0.5 + (rel @ CAMERA_UP) / depth / (2 * hy)
        return np.stack([np.round(u * self.width), np.round(self.height - v * self.height), depth], axis=1)

    def rays(self, supersample: int = 1) -> np.ndarray:
        """Unit ray directions through the pixel (sub-pixel) centres, [H*ss, W*ss, 3]."""
        w, h = self.width * supersample, self.height * supersample
        hx, hy = self.half_extent
        u = ((np.arange(w) + 0.5) / w - 0.5) * 2 * hx
        v = (0.5 - (np.arange(h) + 0.5) / h) * 2 * hy
        d = CAMERA_FORWARD + u[None, :, None] * CAMERA_RIGHT + v[:, None, None] * CAMERA_UP
        return d / np.linalg.norm(d, axis=-1, keepdims=True)


@dataclass
class Objects:
    """Objects as arrays: centre [K, 3], radius (cube: half side) [K], shape index [K], rotation (deg) [K]."""
    center: np.ndarray
    radius: np.ndarray
    shape: np.ndarray
    theta: np.ndarray


def sample_layout(rng: np.random.Generator, n: int) -> tuple[Objects, list[str]]:
    """CLEVR's placement loop: returns positions/sizes/shapes of ``n`` objects and their size names."""
    size_list = list(SIZES)
    while True:
        xy, rs, shapes, size_names = np.zeros((0, 2)), np.zeros(0), [], []
        for _ in range(n):
            size_name = size_list[rng.integers(len(size_list))]
            r = SIZES[size_name]
            # CLEVR draws up to MAX_RETRIES positions one by one and keeps the first that fits: draw them
            # at once and keep the first that fits (same distribution)
            cand = rng.uniform(-3, 3, size=(MAX_RETRIES, 2))
            ok = np.flatnonzero(_fits(cand, xy, r, rs))
            if len(ok) == 0:
                break  # too many failures: start the whole scene over, like CLEVR
            shape = int(rng.integers(len(SHAPES)))
            if SHAPES[shape] == "cube":
                r /= np.sqrt(2.0)   # CLEVR's cube half side; later spacing tests use it too
            xy, rs = np.vstack([xy, cand[ok[0]]]), np.append(rs, r)
            shapes.append(shape)
            size_names.append(size_name)
        if len(size_names) == n:
            break
    theta = 360.0 * rng.random(n)
    # every object rests on the ground: its centre height is its radius (cube: half side)
    return Objects(np.column_stack([xy, rs]), rs, np.array(shapes), theta), size_names


def _fits(cand: np.ndarray, xy: np.ndarray, r: float, rs: np.ndarray) -> np.ndarray:
    """CLEVR's test for candidate positions [C, 2] against placed ones [N, 2]: min_dist gap, and no
    offset in (0, margin) along any cardinal direction."""
    delta = cand[:, None, :] - xy[None]                              # [C, N, 2]
    good = (np.linalg.norm(delta, axis=-1) - r - rs >= MIN_DIST).all(1)
    for name in ("left", "right", "front", "behind"):
        margin = delta @ DIRECTIONS[name][:2]
        good &= ~((margin > 0) & (margin < MARGIN)).any(1)
    return good


# ---------------------------------------------------------------- ray casting (rays [P, 3], one object)
# Each object is tested only against the rays that can reach its bounding sphere, so the cost grows with
# the pixels objects cover rather than with pixels x objects.

def _rotz(x: np.ndarray, y: np.ndarray, theta_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate (x, y) by -theta degrees: world -> the object's frame."""
    c, s = np.cos(np.radians(theta_deg)), np.sin(np.radians(theta_deg))
    return x * c + y * s, -x * s + y * c


def _t_sphere(oc: np.ndarray, d: np.ndarray, r: float, _theta: float) -> np.ndarray:
    b = d @ oc if oc.ndim == 1 else np.einsum("pc,pc->p", oc, d)
    disc = b * b - ((oc * oc).sum(-1) - r * r)
    t = -b - np.sqrt(disc)
    return np.where((disc > 0) & (t > EPS), t, np.inf)


def _t_cube(oc: np.ndarray, d: np.ndarray, s: float, theta: float) -> np.ndarray:
    ox, oy = _rotz(oc[..., 0], oc[..., 1], theta)
    dx, dy = _rotz(d[:, 0], d[:, 1], theta)
    t_near, t_far = np.full(len(d), -np.inf), np.full(len(d), np.inf)
    for o, dd in ((ox, dx), (oy, dy), (oc[..., 2], d[:, 2])):   # slab test in the object's frame
        t1, t2 = (-s - o) / dd, (s - o) / dd
        t_near = np.maximum(t_near, np.minimum(t1, t2))
        t_far = np.minimum(t_far, np.maximum(t1, t2))
    return np.where((t_far >= t_near) & (t_near > EPS), t_near, np.inf)


def _t_cylinder(oc: np.ndarray, d: np.ndarray, r: float, _theta: float) -> np.ndarray:
    ox, oy, oz = oc[..., 0], oc[..., 1], oc[..., 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    disc = b * b - a * (ox * ox + oy * oy - r * r)
    t_side = (-b - np.sqrt(disc)) / a
    t_side = np.where((disc > 0) & (t_side > EPS) & (np.abs(oz + t_side * dz) <= r), t_side, np.inf)
    t_cap = (r - oz) / dz                       # top cap at centre + r (the bottom one lies on the ground)
    cx, cy = ox + t_cap * dx, oy + t_cap * dy
    t_cap = np.where((t_cap > EPS) & (cx * cx + cy * cy <= r * r), t_cap, np.inf)
    return np.minimum(t_side, t_cap)


_T_SHAPE = (_t_cube, _t_sphere, _t_cylinder)             # indexed like SHAPES
BOUND = np.array([np.sqrt(3.0), 1.0, np.sqrt(2.0)])      # bounding-sphere radius / radius, like SHAPES


def bounding_radius(obj: Objects) -> np.ndarray:
    return obj.radius * BOUND[obj.shape]


def cast(origin: np.ndarray, d: np.ndarray, obj: Objects,
         candidates: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit along rays ``origin + t d`` (origin [3] or [P, 3]): (t [P], object index [P]; inf and
    -1 where nothing is hit). ``candidates[k]`` limits object k to those ray indices (default: all)."""
    P = len(d)
    t, k = np.full(P, np.inf), np.full(P, -1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for j in range(len(obj.radius)):
            idx = np.arange(P) if candidates is None else candidates[j]
            if len(idx) == 0:
                continue
            oc = (origin if origin.ndim == 1 else origin[idx]) - obj.center[j]
            tj = _T_SHAPE[obj.shape[j]](oc, d[idx], obj.radius[j], obj.theta[j])
            better = tj < t[idx]
            t[idx[better]], k[idx[better]] = tj[better], j
    return t, k


def screen_candidates(cam: Camera, obj: Objects, supersample: int) -> list[np.ndarray]:
    """For each object, the (sub-)pixels inside the screen rectangle of its bounding sphere."""
    w, h = cam.width * supersample, cam.height * supersample
    hx, hy = cam.half_extent
    rel = obj.center - cam.location
    depth, R = rel @ CAMERA_FORWARD, bounding_radius(obj)
    X, Y = rel @ CAMERA_RIGHT, rel @ CAMERA_UP
    out = []
    for j in range(len(R)):
        if depth[j] - R[j] <= 1e-3:          # reaches behind the image plane: test every pixel
            out.append(np.arange(w * h))
            continue
        zs = np.array([depth[j] - R[j], depth[j] + R[j]])
        # the sphere lies in a box; x/z and y/z over the box are extreme at its corners
        x0, x1 = ((X[j] - R[j]) / zs).min(), ((X[j] + R[j]) / zs).max()
        y0, y1 = ((Y[j] - R[j]) / zs).min(), ((Y[j] + R[j]) / zs).max()
        c0, c1 = (np.floor((0.5 + np.array([x0, x1]) / (2 * hx)) * w - 0.5) + [0, 2]).clip(0, w).astype(int)
        r0, r1 = (np.floor((0.5 - np.array([y1, y0]) / (2 * hy)) * h - 0.5) + [0, 2]).clip(0, h).astype(int)
        out.append((np.arange(r0, r1)[:, None] * w + np.arange(c0, c1)[None, :]).ravel())
    return out


def shadow_candidates(points: np.ndarray, key: np.ndarray, obj: Objects) -> list[np.ndarray]:
    """For each object, the points whose ray towards the (directional) key light passes its bounding sphere."""
    u = _unit(np.cross(key, [1.0, 0.0, 0.0] if abs(key[0]) < 0.9 else [0.0, 1.0, 0.0]))
    v = np.cross(key, u)
    basis = np.stack([u, v, key], 1)
    p, c = points @ basis, obj.center @ basis                 # light-aligned coordinates
    R = bounding_radius(obj)
    out = []
    for j in range(len(R)):
        dx, dy = p[:, 0] - c[j, 0], p[:, 1] - c[j, 1]
        out.append(np.flatnonzero((dx * dx + dy * dy < R[j] * R[j]) & (p[:, 2] < c[j, 2] + R[j])))
    return out


def normals(p: np.ndarray, k: np.ndarray, obj: Objects) -> np.ndarray:
    """Outward normals [P, 3] at surface points p [P, 3] of objects k [P]."""
    rel = p - obj.center[k]
    r, shape = obj.radius[k][:, None], obj.shape[k]
    n = rel / r                                                   # sphere
    lx, ly = _rotz(rel[:, 0], rel[:, 1], obj.theta[k])
    c, s = np.cos(np.radians(obj.theta[k])), np.sin(np.radians(obj.theta[k]))
    local = np.abs(np.stack([lx, ly, rel[:, 2]], 1))
    axis = np.argmax(local, 1)                                    # cube: the dominant local axis
    sign = np.sign(np.stack([lx, ly, rel[:, 2]], 1)[np.arange(len(k)), axis])
    nl = np.zeros_like(rel)
    nl[np.arange(len(k)), axis] = sign
    cube = np.stack([nl[:, 0] * c - nl[:, 1] * s, nl[:, 0] * s + nl[:, 1] * c, nl[:, 2]], 1)
    radial = np.hypot(rel[:, 0], rel[:, 1]) / r[:, 0]              # cylinder: cap or side
    side = np.column_stack([rel[:, :2] / r, np.zeros(len(k))])
    cyl = np.where((rel[:, 2] / r[:, 0] > radial)[:, None], [0.0, 0.0, 1.0], side)
    n = np.where((shape == 0)[:, None], cube, np.where((shape == 2)[:, None], cyl, n))
    return n / np.linalg.norm(n, axis=1, keepdims=True)


# ---------------------------------------------------------------- shading and whole scenes

KEY_LIGHT = np.array([4.0, -1.0, 6.0])     # direction towards the key light (front right, high); jittered
FILL_LIGHT = _unit(np.array([-3.0, -4.0, 3.0]))
LIGHT_JITTER = 1.0
GROUND_ALBEDO = 0.5


@functools.lru_cache(maxsize=8)
def _rays(width: int, height: int, supersample: int) -> np.ndarray:
    # the camera only translates (jitter), so ray directions depend on the image size alone
    d = Camera(CAMERA_LOCATION, width, height).rays(supersample).reshape(-1, 3)
    d.flags.writeable = False
    return d


def in_shadow(points: np.ndarray, key: np.ndarray, obj: Objects) -> np.ndarray:
    """Whether each point [N, 3] sees an object towards the directional key light."""
    t, _ = cast(points, np.broadcast_to(key, points.shape), obj, shadow_candidates(points, key, obj))
    return np.isfinite(t)


def visible(cam: Camera, obj: Objects, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Primary rays: (distance [P], object index [P], -1 for none) per sub-pixel, row-major."""
    return cast(cam.location, _rays(cam.width, cam.height, supersample), obj,
                screen_candidates(cam, obj, supersample))


def shade(cam: Camera, obj: Objects, albedo: np.ndarray, metal: np.ndarray, key: np.ndarray,
          supersample: int = 2, hits: tuple[np.ndarray, np.ndarray] | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Render -> (uint8 image [H, W, 3], object id per sub-pixel [H*ss, W*ss], -1 for the ground).
    ``hits``: the result of ``visible`` when already computed."""
    d = _rays(cam.width, cam.height, supersample)
    t, k = hits if hits is not None else visible(cam, obj, supersample)
    down = d[:, 2] < 0
    t_ground = np.full(len(d), np.inf)
    t_ground[down] = -cam.location[2] / d[down, 2]
    on_obj = t < t_ground
    g, o = np.flatnonzero(~on_obj & down), np.flatnonzero(on_obj)
    p_g = cam.location + t_ground[g, None] * d[g]
    p_o = cam.location + t[o, None] * d[o]
    n = normals(p_o, k[o], obj)
    ndl = n @ key
    lit = np.flatnonzero(ndl > 0)
    p_g[:, 2] = 1e-3
    dark = in_shadow(np.concatenate([p_g, p_o[lit] + 1e-3 * n[lit]]), key, obj)
    shadow_o = np.zeros(len(o))
    shadow_o[lit] = ~dark[len(g):]

    rgb = np.full((len(d), 3), 0.8)                                # sky, if the jittered camera sees it
    # the ground's normal is +z: only its shadow varies
    rgb[g] = (GROUND_ALBEDO * (0.32 + 0.75 * key[2] * ~dark[:len(g)] + 0.18 * FILL_LIGHT[2]))[:, None]
    diffuse = 0.32 + 0.75 * np.maximum(ndl, 0) * shadow_o + 0.18 * np.maximum(n @ FILL_LIGHT, 0)
    half = key - d[o]
    spec = np.maximum(np.einsum("pc,pc->p", n, half / np.linalg.norm(half, axis=1, keepdims=True)), 0)
    base, is_metal = albedo[k[o]], metal[k[o]]
    refl_z = d[o, 2] - 2 * np.einsum("pc,pc->p", d[o], n) * n[:, 2]
    env = np.where(refl_z < 0, 0.45, 0.75 + 0.35 * refl_z)        # mirror: grey ground below, bright sky above
    gain = np.where(is_metal, 0.3 * diffuse + 0.85 * env, diffuse)
    gloss = np.where(is_metal, 0.9 * spec ** 60, 0.12 * spec ** 12) * shadow_o
    rgb[o] = base * gain[:, None] + gloss[:, None]
    h, w = cam.height, cam.width
    img = rgb.reshape(h, supersample, w, supersample, 3).mean(axis=(1, 3))
    ids = np.where(on_obj, k, -1).reshape(h * supersample, w * supersample)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), ids


def relationships(coords: np.ndarray, eps: float = 0.2) -> dict[str, list[list[int]]]:
    """CLEVR's spatial relationships: j is in ``rel`` of i when (c_j - c_i) . direction > eps."""
    out = {}
    for name in ("left", "right", "front", "behind"):
        proj = coords @ DIRECTIONS[name]
        diff = proj[None, :] - proj[:, None]
        out[name] = [[int(j) for j in np.flatnonzero(row > eps) if j != i] for i, row in enumerate(diff)]
    return out


def render_scene(rng: np.random.Generator, width: int, height: int,
                 supersample: int = 2) -> tuple[np.ndarray, dict]:
    """Sample and render one CLEVR scene: (uint8 image [H, W, 3], scene fields: objects, directions,
    relationships). Every object covers at least CLEVR's minimum visible fraction of the image."""
    n = int(rng.integers(3, 11))
    cam = Camera(CAMERA_LOCATION + rng.uniform(-CAMERA_JITTER, CAMERA_JITTER, 3), width, height)
    key = _unit(KEY_LIGHT + rng.uniform(-LIGHT_JITTER, LIGHT_JITTER, 3))
    min_px = MIN_VISIBLE_FRACTION * width * height * supersample ** 2
    while True:
        obj, size_names = sample_layout(rng, n)
        color_names = [list(COLORS)[i] for i in rng.integers(len(COLORS), size=n)]
        metal = rng.integers(len(MATERIALS), size=n) == 1
        hits = visible(cam, obj, supersample)
        # CLEVR re-places all objects when one is (nearly) hidden; the ground hides none (it lies below)
        if (np.bincount(hits[1] + 1, minlength=n + 1)[1:] >= min_px).all():
            break
    albedo = np.array([COLORS[c] for c in color_names]) / 255.0
    img, _ = shade(cam, obj, albedo, metal, key, supersample, hits)
    pix = cam.project(obj.center)
    objects = [{"color": color_names[i], "size": size_names[i], "rotation": float(obj.theta[i]),
                "shape": SHAPES[obj.shape[i]], "3d_coords": [float(v) for v in obj.center[i]],
                "material": MATERIALS[int(metal[i])],
                "pixel_coords": [int(pix[i, 0]), int(pix[i, 1]), float(pix[i, 2])]} for i in range(n)]
    scene = {"objects": objects, "directions": {k: [float(x) for x in v] for k, v in DIRECTIONS.items()},
             "relationships": relationships(obj.center)}
    return img, scene
