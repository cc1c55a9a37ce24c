"""The models' fast paths: recurrences with hand-written backward passes and the C++ row loop.
Each computes what the readable code in its model's module computes (the tests check values and
gradients against it); the models pick them where they apply."""
