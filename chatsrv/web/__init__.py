"""The browser client's static files (index.html, app.js, style.css), served by
the web port (chatsrv/net/websocket.py). No build step, no external resources."""
