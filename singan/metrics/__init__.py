"""How good a trained model is: SIFID (Inception features), weight-free patch metrics, the patch
losses that can stand in for the critic, and the verdict (ok / suspect) on a finished model."""
