module nsrun

go 1.19
