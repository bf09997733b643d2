from bumps.names import FitProblem
problem = FitProblem(
