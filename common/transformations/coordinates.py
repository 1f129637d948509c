"""Geodetic (WGS-84 lat/lon degrees, altitude m) <-> ECEF (m) <-> local NED (north, east, down; m).

All functions are vectorised over leading axes of (..., 3) arrays.
"""
import numpy as np

WGS84_A = 6378137.0                      # semi-major axis, m
WGS84_F = 1.0 / 298.257223563            # flattening
WGS84_B = WGS84_A * (1.0 - WGS84_F)      # semi-minor axis, m
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)     # first eccentricity squared
WGS84_EP2 = WGS84_E2 / (1.0 - WGS84_E2)  # second eccentricity squared


def _as3(a, name: str) -> np.ndarray:
  a = np.asarray(a, dtype=np.float64)
  if a.shape[-1:] != (3,):
    raise ValueError(f"{name}: expected shape (..., 3), got {a.shape}")
  return a


def geodetic2ecef(lla_deg) -> np.ndarray:
  """(..., 3) (latitude deg, longitude deg, altitude m) -> (..., 3) ECEF m."""
  lla = _as3(lla_deg, "geodetic2ecef(lla_deg)")
  lat, lon, alt = np.radians(lla[..., 0]), np.radians(lla[..., 1]), lla[..., 2]
  n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)   # prime-vertical radius of curvature
  x = (n + alt) * np.cos(lat) * np.cos(lon)
  y = (n + alt) * np.cos(lat) * np.sin(lon)
  z = (n * (1.0 - WGS84_E2) + alt) * np.sin(lat)
  return np.stack([x, y, z], axis=-1)


def ecef2geodetic(ecef) -> np.ndarray:
  """(..., 3) ECEF m -> (..., 3) (latitude deg, longitude deg, altitude m).

  Bowring's parametric-latitude start followed by Newton-style fixed-point refinement;
  sub-millimetre for any point above the Earth's centre region."""
  e = _as3(ecef, "ecef2geodetic(ecef)")
  x, y, z = e[..., 0], e[..., 1], e[..., 2]
  lon = np.arctan2(y, x)
  p = np.hypot(x, y)
  beta = np.arctan2(WGS84_A * z, WGS84_B * p)  # parametric latitude, initial guess
  lat = np.arctan2(z + WGS84_EP2 * WGS84_B * np.sin(beta) ** 3, p - WGS84_E2 * WGS84_A * np.cos(beta) ** 3)
  for _ in range(3):
    beta = np.arctan2((1.0 - WGS84_F) * np.sin(lat), np.cos(lat))
    lat = np.arctan2(z + WGS84_EP2 * WGS84_B * np.sin(beta) ** 3, p - WGS84_E2 * WGS84_A * np.cos(beta) ** 3)
  n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
  cl, sl = np.cos(lat), np.sin(lat)
  # altitude formula stable at all latitudes (projection on the ellipsoid normal)
  alt = p * cl + z * sl - n * (1.0 - WGS84_E2 * sl * sl)
  return np.stack([np.degrees(lat), np.degrees(lon), alt], axis=-1)


def ned_from_ecef_matrix(lla_deg) -> np.ndarray:
  """Rotation matrix R (3x3, or (...,3,3)) with v_ned = R @ v_ecef at the given geodetic point."""
  lla = _as3(lla_deg, "ned_from_ecef_matrix(lla_deg)")
  lat, lon = np.radians(lla[..., 0]), np.radians(lla[..., 1])
  sl, cl, so, co = np.sin(lat), np.cos(lat), np.sin(lon), np.cos(lon)
  R = np.empty(lla.shape[:-1] + (3, 3))
  R[..., 0, :] = np.stack([-sl * co, -sl * so, cl], -1)     # north
  R[..., 1, :] = np.stack([-so, co, np.zeros_like(so)], -1)  # east
  R[..., 2, :] = np.stack([-cl * co, -cl * so, -sl], -1)    # down
  return R


class LocalCoord:
  """Local tangent plane (NED) about a fixed origin."""

  def __init__(self, origin_lla_deg, origin_ecef):
    self.origin_lla = np.asarray(origin_lla_deg, dtype=np.float64)
    self.origin_ecef = np.asarray(origin_ecef, dtype=np.float64)
    self.ned_from_ecef_matrix = ned_from_ecef_matrix(self.origin_lla)   # (3, 3)
    self.ecef_from_ned_matrix = self.ned_from_ecef_matrix.T

  @classmethod
  def from_geodetic(cls, lla_deg) -> "LocalCoord":
    lla = _as3(lla_deg, "LocalCoord.from_geodetic(lla_deg)")
    if lla.shape != (3,):
      raise ValueError(f"LocalCoord.from_geodetic: origin must have shape (3,), got {lla.shape}")
    return cls(lla, geodetic2ecef(lla))

  @classmethod
  def from_ecef(cls, ecef) -> "LocalCoord":
    e = _as3(ecef, "LocalCoord.from_ecef(ecef)")
    if e.shape != (3,):
      raise ValueError(f"LocalCoord.from_ecef: origin must have shape (3,), got {e.shape}")
    return cls(ecef2geodetic(e), e)

  def ecef2ned(self, ecef) -> np.ndarray:
    """(..., 3) ECEF positions -> (..., 3) NED positions relative to the origin."""
    e = _as3(ecef, "LocalCoord.ecef2ned(ecef)")
    return (e - self.origin_ecef) @ self.ned_from_ecef_matrix.T

  def ned2ecef(self, ned) -> np.ndarray:
    n = _as3(ned, "LocalCoord.ned2ecef(ned)")
    return n @ self.ecef_from_ned_matrix.T + self.origin_ecef

  def geodetic2ned(self, lla_deg) -> np.ndarray:
    return self.ecef2ned(geodetic2ecef(lla_deg))

  def ned2geodetic(self, ned) -> np.ndarray:
    return ecef2geodetic(self.ned2ecef(ned))
