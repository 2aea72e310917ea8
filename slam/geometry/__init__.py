"""Pure geometry functions on numpy arrays (no state): SE3/Sim3, two-view initialisation, PnP,
triangulation, trajectory alignment. Shapes are given in each docstring; poses are 4x4 float64."""
