"""Images and files: reading and writing images, whole-or-absent writes, the output folder of a
training, and the built-in example images."""
