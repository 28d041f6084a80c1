// A TCP server that reads each connection to EOF and forgets to close it.
//
//	go_tcp_forget   (prints PORT n, then SERVED after each EOF; exits at stdin's EOF)
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
)

//go:noinline
func drain(c net.Conn) {
	io.Copy(io.Discard, c) // reads to EOF; the bug: no c.Close()
	fmt.Println("SERVED")
}

//go:noinline
func acceptLoop(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go drain(c)
	}
}

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println("PORT", l.Addr().(*net.TCPAddr).Port)
	go acceptLoop(l)
	bufio.NewReader(os.Stdin).ReadString('\n')
}
