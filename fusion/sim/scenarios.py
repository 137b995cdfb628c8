"""Scenario configurations: the road, the traffic, the light and the sensor noise of a drive.

A `ScenarioConfig` is plain data; `SCENARIOS` names the shipped ones. Everything random in a
drive is drawn from the seed, within the ranges a config gives.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScenarioConfig:
    """One kind of drive. Densities are per 100 m of road; speeds in m/s; colours BGR 0-255."""

    name: str
    # Road: lanes per direction, widths, and how curvy it is.
    lanes_per_direction: int = 2
    lane_width_m: float = 3.3
    median_m: float = 0.0
    bike_lane_m: float = 0.0
    parking_m: float = 0.0
    sidewalk_m: float = 0.0
    shoulder_m: float = 0.0
    max_curvature_per_m: float = 1 / 150
    curve_fraction: float = 0.4
    # Ego vehicle: nominal speed of its lane and its lane index (0 = rightmost).
    ego_speed_mps: float = 11.0
    ego_lane: int = 0
    # Traffic.
    lane_speed_spread_mps: float = 2.5
    oncoming: bool = True
    vehicles_per_100m_per_lane: float = 2.0
    truck_fraction: float = 0.12
    parked_per_100m: float = 0.0
    pedestrians_per_100m: float = 0.0
    crossing_fraction: float = 0.0
    cyclists_per_100m: float = 0.0
    # Scenery: buildings along the sidewalks, trees, poles, guard rails.
    buildings: bool = False
    trees_per_100m: float = 0.0
    poles_per_100m: float = 0.0
    guard_rails: bool = False
    # Light and camera.
    night: bool = False
    ambient: float = 0.5
    sun_strength: float = 0.55
    sky_top_bgr: tuple[int, int, int] = (200, 140, 90)
    sky_horizon_bgr: tuple[int, int, int] = (235, 215, 195)
    ground_bgr: tuple[int, int, int] = (70, 120, 95)
    haze_m: float = 400.0
    light_variation: float = 0.12
    noise_sigma: float = 2.0
    exposure_us: int = 4000
    draw_distance_m: float = 160.0
    # Radar.
    radar_max_range_m: float = 120.0
    clutter_per_scan: float = 25.0
    false_alarms_per_scan: float = 3.0


SCENARIOS: dict[str, ScenarioConfig] = {
    "city": ScenarioConfig(
        name="city",
        lanes_per_direction=2,
        lane_width_m=3.2,
        bike_lane_m=1.6,
        parking_m=2.2,
        sidewalk_m=3.5,
        max_curvature_per_m=1 / 120,
        curve_fraction=0.45,
        ego_speed_mps=10.0,
        ego_lane=0,
        lane_speed_spread_mps=2.5,
        vehicles_per_100m_per_lane=2.2,
        truck_fraction=0.1,
        parked_per_100m=3.0,
        pedestrians_per_100m=5.0,
        crossing_fraction=0.15,
        cyclists_per_100m=1.2,
        buildings=True,
        trees_per_100m=3.0,
        poles_per_100m=2.0,
        draw_distance_m=150.0,
        radar_max_range_m=100.0,
        clutter_per_scan=30.0,
    ),
    "highway": ScenarioConfig(
        name="highway",
        lanes_per_direction=3,
        lane_width_m=3.7,
        median_m=1.2,
        shoulder_m=2.5,
        max_curvature_per_m=1 / 700,
        curve_fraction=0.5,
        ego_speed_mps=26.0,
        ego_lane=1,
        lane_speed_spread_mps=4.0,
        vehicles_per_100m_per_lane=1.7,
        truck_fraction=0.3,
        trees_per_100m=1.5,
        guard_rails=True,
        ground_bgr=(80, 135, 110),
        draw_distance_m=250.0,
        radar_max_range_m=160.0,
        clutter_per_scan=25.0,
    ),
    "night": ScenarioConfig(
        name="night",
        lanes_per_direction=2,
        lane_width_m=3.3,
        bike_lane_m=1.5,
        sidewalk_m=3.0,
        max_curvature_per_m=1 / 150,
        curve_fraction=0.4,
        ego_speed_mps=12.0,
        ego_lane=0,
        vehicles_per_100m_per_lane=1.6,
        truck_fraction=0.12,
        parked_per_100m=1.5,
        pedestrians_per_100m=2.0,
        crossing_fraction=0.1,
        cyclists_per_100m=0.8,
        buildings=True,
        trees_per_100m=2.0,
        poles_per_100m=2.5,
        night=True,
        ambient=0.07,
        sun_strength=0.0,
        sky_top_bgr=(18, 10, 6),
        sky_horizon_bgr=(40, 30, 26),
        ground_bgr=(40, 60, 50),
        haze_m=250.0,
        light_variation=0.03,
        noise_sigma=5.0,
        exposure_us=20000,
        draw_distance_m=150.0,
        radar_max_range_m=100.0,
        clutter_per_scan=30.0,
    ),
}
