package com.example;

import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;

/** HttpURLConnection's keep-alive cache holds the idle connection the server has closed. */
public class PoolClient {
    static String fetch(URL url) throws Exception {
        HttpURLConnection c = (HttpURLConnection) url.openConnection();
        try (InputStream in = c.getInputStream()) { // closewait-test: open
            return new String(in.readAllBytes());
        }
    }

    public static void main(String[] args) throws Exception {
        URL url = new URL("http://127.0.0.1:" + args[0] + "/");
        for (int i = 0; i < 3; i++) {
            fetch(url);
        }
        System.out.println("fetched");
        System.out.flush();
        Thread.sleep(60000);
    }
}
