"""Intel Loihi 1 and Loihi 2: fixed-point arithmetic, legalization, the integer emulator and netx bundles."""
