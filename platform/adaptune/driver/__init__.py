"""The job driver's side (the process `ray job submit` starts): plan a run, prepare its data once, connect to
Ray, run a Tune sweep whose trials each own a Ray Train `TorchTrainer`, collect the results and print them."""
