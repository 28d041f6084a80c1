package com.example;

import java.io.InputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;

/** Closes every connection at EOF. */
public class CleanServer {
    public static void main(String[] args) throws Exception {
        ServerSocket srv = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        System.out.println(srv.getLocalPort());
        System.out.flush();
        while (true) {
            try (Socket s = srv.accept(); InputStream in = s.getInputStream()) {
                byte[] buf = new byte[256];
                while (in.read(buf) > 0) {
                }
            }
        }
    }
}
