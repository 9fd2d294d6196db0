"""Matplotlib figures (Agg backend) for the results each job writes under its workdir."""
