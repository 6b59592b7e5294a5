"""metarl: meta-RL (MAML and ANIL with TRPO or VPG outer updates) and the representation analyses of
Raghu et al. (2020), "Rapid Learning or Feature Reuse?". The command line is `metarl.cli`."""
