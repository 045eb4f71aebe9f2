"""The datasets: their catalog, the CSAW HDF5 schema, image files, downloads and checksums, each network's
input scale."""
