"""Every text a user reads, in English and Vietnamese.

Frontends and the CLI never hard-code user-facing sentences: they render a message key in the
user's locale (Telegram `language_code`, Discord `locale`, the browser's language). English is the
fallback for unknown locales and for keys not yet translated.
"""

from __future__ import annotations

CATALOGUE: dict[str, dict[str, str]] = {
    "en": {
        "prompt_empty": "The prompt is empty. Describe the picture, e.g. /imagine a red fox in the snow --ar 16:9",
        "prompt_too_long": "The prompt is {got} characters long; the limit is {limit}.",
        "negative_too_long": "The negative prompt is {got} characters long; the limit is {limit}.",
        "flag_unknown": "Unknown option --{flag}. Allowed: {allowed}.",
        "flag_needs_value": "--{flag} needs a value, e.g. {example}.",
        "flag_twice": "--{flag} was given twice; give it once.",
        "flag_conflict": "Give either --size or --ar, not both.",
        "not_integer": "{name} must be a whole number, got '{got}'.",
        "not_number": "{name} must be a number, got '{got}'.",
        "out_of_range": "{name} must be {low}-{high}, got {got}.",
        "bad_size": "Size must look like 768x512 (width x height), got '{got}'.",
        "bad_aspect": "Aspect ratio must look like 16:9, got '{got}'.",
        "aspect_out_of_range": "Aspect ratio {got} is too extreme; allowed from 1:4 to 4:1.",
        "side_out_of_range": "Width and height must be {low}-{high} pixels, got {width}x{height}.",
        "too_many_pixels": "{width}x{height} is {pixels} pixels; the limit is {limit} (e.g. {example}).",
        "bad_model_name": "'{got}' is not a model name. Names use letters, digits, '.', '_' and '-'.",
        "unknown_model": "There is no model '{got}'. Available: {available}.",
        "no_models": "No model is installed, so '{got}' cannot be used. Put a model in {models_dir}/{got}/: a diffusers model folder (with model_index.json) or a .safetensors checkpoint, plus a variant.toml saying kind = \"pipeline\" or file = \"model.safetensors\". See README, 'Adding models'.",
        "model_broken": "Model '{name}' cannot be used right now: {error}",
        "unknown_scheduler": "Unknown scheduler '{got}'. Allowed: {allowed}.",
        "model_offline": "Model '{name}' comes from the hub ({repo}) and is not downloaded, and this machine is offline. Download it on a machine with internet access, or copy it into {folder}.",
        "out_of_memory": "The GPU ran out of memory for {width}x{height}, even one image at a time. Try a smaller size or fewer steps.",
        "cancelled": "The job was cancelled.",
        "strength_out_of_range": "strength must be 0.05-1, got {got}.",
        "init_image_missing": "The start image {got} does not exist.",
        "banned": "You cannot use this bot: {reason}",
        "queue_full": "You already have {count} jobs waiting; the limit is {limit}. Wait for one to finish or cancel one.",
        "rate_limited": "You have made {count} requests in the last hour; the limit is {limit}. Try again later.",
        "not_admin": "Only admins can do that.",
        "job_not_found": "There is no job #{job}.",
        "not_your_job": "Job #{job} belongs to someone else; only they or an admin can change it.",
        "already_finished": "Job #{job} has already finished ({status}).",
        "worker_crashed": "The worker stopped while making this ({attempts} attempts); giving up.",
        "timed_out": "This took longer than {seconds} s and was stopped.",
        "generation_failed": "Generating failed ({error}). The bot keeps running; try again or tell an admin.",
        "shutting_down": "The bot is restarting; try again in a minute.",
        "admin_api_disabled": "The admin API is off: set IMAGEBOT_ADMIN_TOKEN to use it.",
        "no_such_image": "Job #{job} has no finished image {index}.",
        "admin_token_missing": "This needs the admin token: send Authorization: Bearer <IMAGEBOT_ADMIN_TOKEN>.",
        # the web page
        "ui_title": "Image Chatbot",
        "ui_tab_chat": "Chat",
        "ui_tab_gallery": "Gallery",
        "ui_tab_admin": "Admin",
        "ui_prompt_label": "Describe an image, or type a command",
        "ui_prompt_placeholder": "a red fox in the snow --ar 16:9   (/help for commands)",
        "ui_send": "Generate",
        "ui_advanced": "Advanced settings",
        "ui_negative": "Negative prompt",
        "ui_model": "Model",
        "ui_model_default": "default ({name})",
        "ui_aspect": "Aspect ratio",
        "ui_size": "Size (WxH, overrides the aspect)",
        "ui_steps": "Steps",
        "ui_guidance": "Guidance (CFG)",
        "ui_seed": "Seed (empty = random)",
        "ui_count": "Images",
        "ui_scheduler": "Scheduler",
        "ui_auto": "auto",
        "ui_queued": "Queued #{position}",
        "ui_eta": "about {seconds} s",
        "ui_starting": "Starting…",
        "ui_progress": "Step {step} of {total}",
        "ui_done": "Done",
        "ui_cancelled": "Cancelled",
        "ui_failed": "Failed: {error}",
        "ui_cancel": "Cancel",
        "ui_reroll": "Reroll",
        "ui_variation": "Variations",
        "ui_upscale": "Upscale 2x",
        "ui_download": "Download PNG",
        "ui_copy_seed": "Copy seed {seed}",
        "ui_copy_params": "Copy parameters",
        "ui_reuse": "Use these settings",
        "ui_copied": "Copied",
        "ui_seed_label": "seed {seed}",
        "ui_help": "Type a prompt and press Enter. Options can go inside the prompt: --ar 16:9, --size 768x512, --seed 42, --no blurry, text, --steps 30, --cfg 7, --n 4, --model NAME, --scheduler euler_a. Commands: /imagine PROMPT, /model (list models), /queue (your waiting jobs), /help.",
        "ui_models_list": "Models (default: {default}): {models}",
        "ui_queue_empty": "You have no jobs waiting.",
        "ui_queue_item": "Job #{id}: {status} {detail}",
        "ui_unknown_command": "Unknown command {command}. Try /help.",
        "ui_model_admin_hint": "Changing the default model is an admin task: unlock the Admin tab with the admin token first.",
        "ui_gallery_empty": "Your finished images appear here.",
        "ui_admin_token": "Admin token",
        "ui_admin_unlock": "Unlock",
        "ui_admin_reload": "Reload models",
        "ui_admin_set_default": "Make default",
        "ui_admin_default": "default",
        "ui_admin_loaded": "loaded",
        "ui_admin_reloaded": "Added: {added}. Changed: {changed}. Removed: {removed}.",
        "ui_network_error": "The bot cannot be reached. Is imagebot serve still running?",
        "ui_grid": "Open the grid",
        "ui_model_set": "The default model is now {name}.",
        "ui_you": "You",
        "ui_bot": "Bot",
        "ui_none": "none",
    },
    "vi": {
        "prompt_empty": "Câu mô tả đang trống. Hãy mô tả bức ảnh, ví dụ: /imagine một con cáo đỏ trên tuyết --ar 16:9",
        "prompt_too_long": "Câu mô tả dài {got} ký tự; giới hạn là {limit}.",
        "negative_too_long": "Câu mô tả loại trừ dài {got} ký tự; giới hạn là {limit}.",
        "flag_unknown": "Không có tùy chọn --{flag}. Các tùy chọn hợp lệ: {allowed}.",
        "flag_needs_value": "--{flag} cần một giá trị, ví dụ {example}.",
        "flag_twice": "--{flag} được nhập hai lần; chỉ nhập một lần.",
        "flag_conflict": "Chỉ dùng --size hoặc --ar, không dùng cả hai.",
        "not_integer": "{name} phải là số nguyên, nhận được '{got}'.",
        "not_number": "{name} phải là một số, nhận được '{got}'.",
        "out_of_range": "{name} phải trong khoảng {low}-{high}, nhận được {got}.",
        "bad_size": "Kích thước phải có dạng 768x512 (rộng x cao), nhận được '{got}'.",
        "bad_aspect": "Tỉ lệ khung hình phải có dạng 16:9, nhận được '{got}'.",
        "aspect_out_of_range": "Tỉ lệ {got} quá lệch; cho phép từ 1:4 đến 4:1.",
        "side_out_of_range": "Chiều rộng và chiều cao phải trong khoảng {low}-{high} điểm ảnh, nhận được {width}x{height}.",
        "too_many_pixels": "{width}x{height} là {pixels} điểm ảnh; giới hạn là {limit} (ví dụ {example}).",
        "bad_model_name": "'{got}' không phải tên mô hình. Tên chỉ gồm chữ, số, '.', '_' và '-'.",
        "unknown_model": "Không có mô hình '{got}'. Hiện có: {available}.",
        "no_models": "Chưa cài mô hình nào nên không dùng được '{got}'. Hãy đặt mô hình vào {models_dir}/{got}/: một thư mục mô hình diffusers (có model_index.json) hoặc một tệp .safetensors, kèm variant.toml ghi kind = \"pipeline\" hoặc file = \"model.safetensors\". Xem README, mục 'Adding models'.",
        "model_broken": "Mô hình '{name}' hiện không dùng được: {error}",
        "unknown_scheduler": "Không có bộ lấy mẫu '{got}'. Các giá trị hợp lệ: {allowed}.",
        "model_offline": "Mô hình '{name}' lấy từ hub ({repo}) nhưng chưa được tải về, và máy này không có mạng. Hãy tải nó trên máy có mạng, hoặc chép vào {folder}.",
        "out_of_memory": "GPU hết bộ nhớ với kích thước {width}x{height}, kể cả khi tạo từng ảnh. Hãy thử kích thước nhỏ hơn hoặc ít bước hơn.",
        "cancelled": "Yêu cầu đã bị hủy.",
        "strength_out_of_range": "strength phải trong khoảng 0.05-1, nhận được {got}.",
        "init_image_missing": "Ảnh gốc {got} không tồn tại.",
        "banned": "Bạn không thể dùng bot này: {reason}",
        "queue_full": "Bạn đang có {count} yêu cầu chờ; giới hạn là {limit}. Hãy đợi một yêu cầu xong hoặc hủy bớt.",
        "rate_limited": "Bạn đã gửi {count} yêu cầu trong giờ qua; giới hạn là {limit}. Hãy thử lại sau.",
        "not_admin": "Chỉ quản trị viên mới làm được việc này.",
        "job_not_found": "Không có yêu cầu #{job}.",
        "not_your_job": "Yêu cầu #{job} là của người khác; chỉ họ hoặc quản trị viên mới thay đổi được.",
        "already_finished": "Yêu cầu #{job} đã kết thúc ({status}).",
        "worker_crashed": "Bộ tạo ảnh đã dừng khi làm yêu cầu này ({attempts} lần thử); đã bỏ qua.",
        "timed_out": "Yêu cầu mất hơn {seconds} giây nên đã bị dừng.",
        "generation_failed": "Tạo ảnh thất bại ({error}). Bot vẫn chạy; hãy thử lại hoặc báo quản trị viên.",
        "shutting_down": "Bot đang khởi động lại; hãy thử lại sau một phút.",
        "admin_api_disabled": "API quản trị đang tắt: hãy đặt IMAGEBOT_ADMIN_TOKEN để dùng.",
        "no_such_image": "Yêu cầu #{job} không có ảnh hoàn chỉnh số {index}.",
        "admin_token_missing": "Việc này cần mã quản trị: gửi Authorization: Bearer <IMAGEBOT_ADMIN_TOKEN>.",
        # trang web
        "ui_title": "Image Chatbot",
        "ui_tab_chat": "Trò chuyện",
        "ui_tab_gallery": "Thư viện",
        "ui_tab_admin": "Quản trị",
        "ui_prompt_label": "Mô tả bức ảnh, hoặc gõ một lệnh",
        "ui_prompt_placeholder": "một con cáo đỏ trên tuyết --ar 16:9   (/help để xem lệnh)",
        "ui_send": "Tạo ảnh",
        "ui_advanced": "Cài đặt nâng cao",
        "ui_negative": "Mô tả loại trừ",
        "ui_model": "Mô hình",
        "ui_model_default": "mặc định ({name})",
        "ui_aspect": "Tỉ lệ khung hình",
        "ui_size": "Kích thước (RộngxCao, thay cho tỉ lệ)",
        "ui_steps": "Số bước",
        "ui_guidance": "Độ bám mô tả (CFG)",
        "ui_seed": "Seed (để trống = ngẫu nhiên)",
        "ui_count": "Số ảnh",
        "ui_scheduler": "Bộ lấy mẫu",
        "ui_auto": "tự động",
        "ui_queued": "Đang chờ, vị trí #{position}",
        "ui_eta": "khoảng {seconds} giây",
        "ui_starting": "Đang bắt đầu…",
        "ui_progress": "Bước {step}/{total}",
        "ui_done": "Xong",
        "ui_cancelled": "Đã hủy",
        "ui_failed": "Thất bại: {error}",
        "ui_cancel": "Hủy",
        "ui_reroll": "Tạo lại",
        "ui_variation": "Biến thể",
        "ui_upscale": "Phóng to 2x",
        "ui_download": "Tải PNG",
        "ui_copy_seed": "Chép seed {seed}",
        "ui_copy_params": "Chép thông số",
        "ui_reuse": "Dùng lại cài đặt này",
        "ui_copied": "Đã chép",
        "ui_seed_label": "seed {seed}",
        "ui_help": "Gõ mô tả rồi nhấn Enter. Có thể thêm tùy chọn ngay trong mô tả: --ar 16:9, --size 768x512, --seed 42, --no blurry, text, --steps 30, --cfg 7, --n 4, --model TÊN, --scheduler euler_a. Lệnh: /imagine MÔ TẢ, /model (danh sách mô hình), /queue (yêu cầu đang chờ), /help.",
        "ui_models_list": "Mô hình (mặc định: {default}): {models}",
        "ui_queue_empty": "Bạn không có yêu cầu nào đang chờ.",
        "ui_queue_item": "Yêu cầu #{id}: {status} {detail}",
        "ui_unknown_command": "Không có lệnh {command}. Thử /help.",
        "ui_model_admin_hint": "Đổi mô hình mặc định là việc của quản trị viên: hãy mở khóa thẻ Quản trị bằng mã quản trị trước.",
        "ui_gallery_empty": "Ảnh đã tạo xong sẽ hiện ở đây.",
        "ui_admin_token": "Mã quản trị",
        "ui_admin_unlock": "Mở khóa",
        "ui_admin_reload": "Tải lại mô hình",
        "ui_admin_set_default": "Đặt làm mặc định",
        "ui_admin_default": "mặc định",
        "ui_admin_loaded": "đã nạp",
        "ui_admin_reloaded": "Thêm: {added}. Đổi: {changed}. Bỏ: {removed}.",
        "ui_network_error": "Không kết nối được bot. imagebot serve còn chạy không?",
        "ui_grid": "Mở ảnh ghép",
        "ui_model_set": "Mô hình mặc định giờ là {name}.",
        "ui_you": "Bạn",
        "ui_bot": "Bot",
        "ui_none": "không có",
    },
}

FALLBACK_LOCALE = "en"


def pick_locale(locale: str | None) -> str:
    """Map a platform locale ("vi", "vi-VN", "en_US", None) or a browser's Accept-Language list
    ("vi,en;q=0.8") to a catalogue language."""
    if not locale:
        return FALLBACK_LOCALE
    choices = []
    for position, part in enumerate(locale.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        choices.append((-quality, position, tag.replace("_", "-").split("-")[0].strip().lower()))
    for _, _, language in sorted(choices):
        if language in CATALOGUE:
            return language
    return FALLBACK_LOCALE


def catalogue_for(locale: str | None, prefix: str = "") -> dict[str, str]:
    """Every text of one language (English where a translation is missing), for pages and apps."""
    language = pick_locale(locale)
    merged = {**CATALOGUE[FALLBACK_LOCALE], **CATALOGUE[language]}
    return {key: text for key, text in merged.items() if key.startswith(prefix)}


def render(key: str, locale: str | None = None, **params: object) -> str:
    language = pick_locale(locale)
    template = CATALOGUE[language].get(key) or CATALOGUE[FALLBACK_LOCALE][key]
    return template.format(**params)
