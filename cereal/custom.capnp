@0xe3f2b8a1c5d79604;
# worldpilot's own messages.  Each sits in one of the Event members openpilot reserves for forks
# (customReserved0..19, see log.capnp), so an openpilot reader sees an empty CustomReservedN struct
# and skips the content; openpilot's own messages carry everything openpilot has a field for.
#
# Rules: a struct here never moves to another customReserved member; fields are only ever added.

using Log = import "log.capnp";

# The simulator's ground truth for the current frame (tools/sim; also the ground_truth/ files).
struct GroundTruth {
  frameId @0 :UInt32;
  poseWorld @1 :List(Float64);       # x, y, z, roll, pitch, yaw in the sim's local world frame
  roadS @2 :Float64;                 # m along the road
  lateralOffset @3 :Float32;         # m from the ego-lane centre, positive = right
  headingError @4 :Float32;          # rad, car yaw minus road yaw, positive = pointing right
  laneWidth @5 :Float32;             # m
  speed @6 :Float32;                 # m/s
  accel @7 :Float32;                 # m/s^2
  curvature @8 :Float32;             # 1/m executed curvature, positive = left
  desire @9 :Log.Desire;
  leadPresent @10 :Bool;
  leadX @11 :Float32;                # m, car frame
  leadY @12 :Float32;
  leadVRel @13 :Float32;             # m/s
  leadARel @14 :Float32;             # m/s^2
  frameTime @15 :Float64;            # s since the start of the segment
}

# The driver's (or the simulator's) lateral intention, the desire input of the model.  openpilot
# derives it inside modeld from blinkers and lane-change state; the stack publishes it explicitly.
struct DrivingDesire {
  desire @0 :Log.Desire;
  source @1 :Text;                   # e.g. "driver", "sim", "blinker"
}

# What worldpilot's modeld outputs beyond openpilot's modelV2 (same frameId as that modelV2).
struct ModelV2Extra {
  frameId @0 :UInt32;
  modelName @1 :Text;
  modelHash @2 :Text;                # content hash of the deployed model files
  gpuExecutionTime @3 :Float32;      # s, accelerator time (0 on CPU)
  planHypotheses @4 :List(PlanHypothesis);   # PLAN_HYPOTHESES entries, probabilities sum to 1
  visionExecutionTime @5 :Float32;   # s, wall time of the vision network on this frame, inside modeld
  policyExecutionTime @6 :Float32;   # s, the same for the policy network

  struct PlanHypothesis {
    prob @0 :Float32;                # softmax of the hypothesis logits
    position @1 :Log.XYZTData;
    velocity @2 :Log.XYZTData;
    acceleration @3 :Log.XYZTData;
    orientation @4 :Log.XYZTData;
    orientationRate @5 :Log.XYZTData;
  }
}

# Geometry of a camera stream: openpilot knows it from the device type, the simulator's cameras are
# configurable (tools/sim --camera WxH@focal).
struct CameraInfo {
  frameId @0 :UInt32;
  width @1 :UInt32;                  # pixels
  height @2 :UInt32;
  stride @3 :UInt32;                 # bytes per row of the luma plane
  intrinsics @4 :List(Float32);      # 3x3 camera matrix, row-major: fx 0 cx / 0 fy cy / 0 0 1
  sensorName @5 :Text;               # e.g. "eon", "sim"
}

# controlsd's figures that openpilot's controlsState has no field for.
struct ControlsStateExtra {
  lateralError @0 :Float32;          # m, lateral deviation of the car from the model's plan
  modelFrameId @1 :UInt32;           # modelV2.frameId used for this step
  cumLagMs @2 :Float32;              # ms behind real time
  steeringAngleDesiredDeg @3 :Float32;
}

struct CustomReserved5 {
}

struct CustomReserved6 {
}

struct CustomReserved7 {
}

struct CustomReserved8 {
}

struct CustomReserved9 {
}

struct CustomReserved10 {
}

struct CustomReserved11 {
}

struct CustomReserved12 {
}

struct CustomReserved13 {
}

struct CustomReserved14 {
}

struct CustomReserved15 {
}

struct CustomReserved16 {
}

struct CustomReserved17 {
}

struct CustomReserved18 {
}

struct CustomReserved19 {
}
