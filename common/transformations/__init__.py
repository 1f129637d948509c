"""Frames and transformations: orientation (quaternion / rotation / Euler), geodetic <-> ECEF <-> NED,
camera models and the model-frame warp. numpy only (device side)."""
