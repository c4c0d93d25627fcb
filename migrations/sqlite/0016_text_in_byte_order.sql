-- PostgreSQL's twin declares COLLATE "C" on every text column. SQLite already
-- compares text byte by byte (BINARY), so nothing changes here.
SELECT 1;
