"""Every measurement of the package, over any denoiser: denoisers and arrays in, numbers out.

    gap.py             E_train / E_val over a sigma grid, G(sigma), distance to a reference
                       denoiser, overfitting onset, peak, G over training, bootstrap intervals
    samples.py         sample-level: FD gap G_FD, copies, early-stopped G_FD and the trajectory
                       probes of one sampler run per denoiser
    probes.py          trajectory overlap, 1-NN cosine similarity, early-stopped outputs
    copies.py          copy fraction (Gu et al. 2023)
    sweeps.py          factor sweeps of G (model error, granularity, guidance, receptive field,
                       gradient score) and analytic baselines
    gradient_score.py  the input-gradient correlation score
    features.py        feature extractors: pixels, a small classifier, external networks
    frechet.py         Gaussian fits and the Frechet distance
    neighbours.py      chunked exact nearest neighbours
    kmeans.py          k-means and pseudo-labels
    reproducibility.py two models on disjoint subsets: model variance V(sigma), seed-paired sample
                       similarity, copies of the own and the other training set
    timescales.py      threshold crossings over snapshots (tau_mem, tau_gen, tau_G, onset) with
                       bootstrap intervals, copy fraction with its interval, log-log slopes vs N
    membership.py      membership inference by sigma: AUC, TPR at low FPR, intervals
    ladder.py          the analytic ladder against a network: per-sigma mse and r2 (normalised by
                       the network's variance), LS/ELS patch-size calibration, each rung's G(sigma)
Nothing here reads a config or a workdir; the jobs (`diffgen_jax.jobs`) do.
"""
