"""Physics reference for the calendering surrogates: DEM (LAMMPS), voxel metrics, empirical models, data set."""
