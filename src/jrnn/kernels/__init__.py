"""Fast paths for the scan driver's time loop. They never change what a cell
computes; tests hold each one to the plain driver, values and gradients."""
