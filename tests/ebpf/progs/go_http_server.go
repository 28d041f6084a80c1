// A clean HTTP server on 127.0.0.1: it closes idle keep-alive connections after IDLE_MS.
//
//	go_http_server IDLE_MS   (prints PORT n; exits at stdin's EOF)
package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func hello(w http.ResponseWriter, r *http.Request) {
	w.Write([]byte("hello\n"))
}

func main() {
	idle, _ := strconv.Atoi(os.Args[1])
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println("PORT", l.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: http.HandlerFunc(hello), IdleTimeout: time.Duration(idle) * time.Millisecond}
	go srv.Serve(l)
	bufio.NewReader(os.Stdin).ReadString('\n')
}
