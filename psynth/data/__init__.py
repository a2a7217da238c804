"""Training data: benchmark readers (`sources`), example builders (`real_tasks`, `procedural`,
`fixed` with `facts`, `build`), branch generation with the base model (`branches`) and the data
command (`main`)."""
