# Sourced by the proxy benchmarks: nginx's `mirror` directive in front of the same two services
# tandem is measured with, as a peer to compare against.

# Writes "$work/nginx.conf": nginx listening on 127.0.0.1:PORT ($1), answering from the old
# service ($old) and mirroring every request to the new one ($new), keep-alive to both.
write_nginx_mirror_conf() {
  local port=$1
  cat >"$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  upstream old { server ${old#http://}; keepalive 64; }
  upstream new { server ${new#http://}; keepalive 64; }
  server {
    listen 127.0.0.1:$port;
    location / {
      mirror /mirror;
      mirror_request_body on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://old;
    }
    location = /mirror {
      internal;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://new\$request_uri;
    }
  }
}
CONF
}
