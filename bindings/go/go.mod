module llorch.dev/llorch

go 1.19
