"""featup_plugin.viz: FeatUp's PCA pictures and plot_feats figure."""
