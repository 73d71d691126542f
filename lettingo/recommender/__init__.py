"""f_Rec: text builders, label-word scoring, trainable recommenders and baselines."""
