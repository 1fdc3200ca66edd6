module github.com/dingproxy/dingproxy/examples/robotburst

go 1.26.0
