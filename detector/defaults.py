"""Detection defaults shared by evaluation, export and serving.

Plain numbers with no imports, so the command line can show them as option defaults in an
install without PyTorch (``detector[serve]``).
"""

EVAL_CONF = 0.01  # YOLOX's test_conf for mAP evaluation
PREDICT_CONF = 0.25  # a sensible threshold for showing or serving detections
NMS_IOU = 0.65  # YOLOX's nmsthre
MAX_DET = 300
