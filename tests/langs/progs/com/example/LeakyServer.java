package com.example;

import java.io.InputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;

/** Keeps every accepted socket in a list and never closes it. */
public class LeakyServer {
    static final List<Socket> held = new ArrayList<>();

    static Socket take(ServerSocket srv) throws Exception {
        return srv.accept(); // closewait-test: open
    }

    static void handle(Socket s) throws Exception {
        held.add(s);
        InputStream in = s.getInputStream();
        byte[] buf = new byte[256];
        while (in.read(buf) > 0) { // closewait-test: eof
        }
    }

    public static void main(String[] args) throws Exception {
        ServerSocket srv = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        System.out.println(srv.getLocalPort());
        System.out.flush();
        while (true) {
            handle(take(srv));
        }
    }
}
