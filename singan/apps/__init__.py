"""Applications of a trained SinGAN (SINGAN.md section 5, in the project's shared reference
folder).

    sr_model = singan.train(low, sr_config(*low.shape[-2:], 4))    # alpha 100, full size
    high = super_resolve(sr_model, 4)                               # 4x larger
    out = paint_to_image(model, paint, start_scale=2)               # sketch -> image
    blended, raw = harmonize(model, naive, mask, start_scale=3)     # a pasted object blends in
    masked, unmasked = edit(model, edited, mask, start_scale=2)
    anim = singan.train(image, animation_config())                  # noise padding, min_size 20
    save_gif(animate(anim, beta=0.95), "clip.gif", fps=10)
"""

from singan.apps.animation import animate, animation_config
from singan.apps.gif import save_gif
from singan.apps.harmonization import edit, harmonize
from singan.apps.paint import paint_to_image, retrain_for_paint
from singan.apps.sr import sr_config, super_resolve

__all__ = ["animate", "animation_config", "edit", "harmonize", "paint_to_image",
           "retrain_for_paint", "save_gif", "sr_config", "super_resolve"]
